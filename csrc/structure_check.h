// resnet_ext._C.structure_matches (structure_check.cpp): whether a model is still what its flat plan recorded.
#pragma once

#include <pybind11/pybind11.h>

namespace resnet_ext {

// Over the lists resnet_ext/engine/structure.py's Structure records: children [(module, (child, ...))], modules and
// their types, convs [(conv, weight, bias, padding, stride, dilation, groups)], bns [(bn, eps)], and the instance
// attribute names that replace what a module computes (`patched`). False at the first difference.
bool structure_matches(const pybind11::list& children, const pybind11::list& modules, const pybind11::list& types,
                       const pybind11::list& convs, const pybind11::list& bns, const pybind11::tuple& patched);

}  // namespace resnet_ext

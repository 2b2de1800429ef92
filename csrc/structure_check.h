// resnet_ext._C.structure_matches (structure_check.cpp): whether a model is still what its flat plan recorded;
// resnet_ext._C.FoldSources: whether the tensors a frozen model's folds were made from are unchanged.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
#include <pybind11/pybind11.h>

#include <vector>

namespace resnet_ext {

// Over the lists resnet_ext/engine/structure.py's Structure records: children [(module, (child, ...))], modules and
// their types, convs [(conv, weight, bias, padding, stride, dilation, groups)], bns [(bn, eps, weight, bias,
// running_mean, running_var)], and the instance attribute names that replace what a module computes (`patched`).
// False at the first difference.
bool structure_matches(const pybind11::list& children, const pybind11::list& modules, const pybind11::list& types,
                       const pybind11::list& convs, const pybind11::list& bns, const pybind11::tuple& patched);

// The frozen mode's fold sources (engine/frozen.py): the tensors its folds were made from, each with its version
// and storage then. `holds()`: whether every one is still at that version (no in-place write since: an optimizer
// step, copy_, fill_, nn.init) and on that storage (no `p.data = q`, as vector_to_parameters does). A write through
// `.data` (`p.data.mul_(2)`) has its own version counter and is not seen; inference tensors have none.
class FoldSources {
 public:
  explicit FoldSources(const std::vector<at::Tensor>& tensors);
  bool holds() const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    at::Tensor tensor;             // kept alive: `storage` is compared by address
    c10::VariableVersion counter;  // the tensor's own counter, read without going through the tensor
    uint32_t version;
    const void* storage;
  };
  std::vector<Entry> entries_;
};

}  // namespace resnet_ext

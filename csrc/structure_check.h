// resnet_ext._C.structure_state (structure_check.cpp): whether a model is still what its flat plan recorded;
// resnet_ext._C.FoldSources: whether the tensors a frozen model's folds were made from are unchanged.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/SmallVector.h>
#include <pybind11/pybind11.h>

#include <vector>

namespace resnet_ext {

// Over the lists resnet_ext/engine/structure.py's Structure records: children [(module, (child, ...))], modules and
// their types, convs [(conv, weight, bias, padding, stride, dilation, groups)], bns [(bn, eps, weight, bias,
// running_mean, running_var)], and the instance attribute names that replace what a module computes (`patched`).
// 0 at the first difference; 2 where the only differences are hooks or patched attributes on recorded modules (the
// module path's units are the recorded ones); 1 where the model is as recorded.
int structure_state(const pybind11::list& children, const pybind11::list& modules, const pybind11::list& types,
                    const pybind11::list& convs, const pybind11::list& bns, const pybind11::tuple& patched);

// The frozen mode's fold sources (engine/frozen.py): the tensors its folds were made from, as Python objects (held),
// and what each held then: its TensorImpl (`torch.utils.swap_tensors` puts another behind the object), version (an
// in-place write: an optimizer step, copy_, fill_, nn.init), dtype, neg/conj bits, storage and its data pointer
// (`share_memory_()` moves the bytes of the same storage), offset, sizes and strides (`p.data = q`, a view of the
// same storage included); strided tensors only (no others are folded).
// `holds()`: whether all are as recorded. Not seen: a write that moves no counter of these tensors (through
// `.data`, numpy, or another tensor on the same storage; a train-mode BN's running statistics: frozen.py watches
// num_batches_tracked; fused optimizer kernels: `folded` lets a hook move them). The StorageImpl is held by a weak
// reference, so its address cannot be reused while recorded; the TensorImpl by address only (swap_tensors refuses
// a tensor with any other reference to its TensorImpl).
class __attribute__((visibility("hidden"))) FoldSources {  // hidden: as pybind11 declares its own types
 public:
  explicit FoldSources(const pybind11::list& tensors);
  ~FoldSources();
  FoldSources(const FoldSources&) = delete;
  FoldSources& operator=(const FoldSources&) = delete;
  bool holds() const;
  size_t size() const { return entries_.size(); }
  // Whether some live FoldSources records this Python tensor object.
  static bool folded(const pybind11::handle& tensor);

 private:
  struct Entry {
    pybind11::object tensor;
    const c10::TensorImpl* impl;
    caffe2::TypeMeta dtype;
    bool neg, conj;
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;  // null for a tensor without storage
    const void* data;
    uint32_t version;
    int64_t offset;
    c10::SmallVector<int64_t, 5> sizes, strides;  // inline: read with the entry, not from elsewhere in the heap
  };
  std::vector<Entry> entries_;
};

}  // namespace resnet_ext

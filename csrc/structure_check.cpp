// resnet_ext._C.structure_state: the per-forward half of resnet_ext/engine/structure.py's Structure.state (whether
// a model is still what its flat plan recorded), over the lists that Structure records. It reads the same attributes
// as the Python loop it replaces, in C: at batch 1 the forward's weights stream through the L3, so these ~1,000
// reads of module dicts come from memory on every forward. resnet50's check inside its frozen batch-1 forward took
// 0.27-0.38 ms in Python and 0.16-0.21 ms here; alone 67-71 -> 27 us warm, 311-362 -> 243-292 us right after a
// 200 MB write (benchmarks/results/2026-12-06-cpu-entry/). (Reading all modules' dicts first, then all
// hook dicts, to overlap the misses, measured no better.) FoldSources: the frozen mode's per-forward check that the
// tensors its folds were made from were not written since.
#include "structure_check.h"

#include <Python.h>
#include <torch/python.h>

#include <unordered_set>

namespace resnet_ext {
namespace {

namespace py = pybind11;

// The module's instance __dict__ (a new reference), or nullptr with no error set where it has none.
PyObject* instance_dict(PyObject* m) {
  PyObject* d = PyObject_GenericGetDict(m, nullptr);
  if (d == nullptr || !PyDict_Check(d)) {
    Py_XDECREF(d);
    PyErr_Clear();
    return nullptr;
  }
  return d;
}

// The attribute names read, interned once: a C string would be decoded and hashed on every lookup (that made
// this loop twice as slow as the Python one).
struct Names {
  PyObject *modules, *parameters, *buffers, *weight, *bias, *padding_mode, *zeros, *training, *eps, *running_mean,
      *running_var, *hooks[4], *geometry[4];
};

const Names& names() {
  static const Names n = [] {
    auto s = [](const char* c) { return PyUnicode_InternFromString(c); };
    return Names{s("_modules"), s("_parameters"), s("_buffers"), s("weight"), s("bias"), s("padding_mode"),
                 s("zeros"), s("training"), s("eps"), s("running_mean"), s("running_var"),
                 {s("_forward_hooks"), s("_forward_pre_hooks"), s("_backward_hooks"), s("_backward_pre_hooks")},
                 {s("padding"), s("stride"), s("dilation"), s("groups")}};
  }();
  return n;
}

// d[key], borrowed; nullptr where absent (no error set: PyDict_GetItem suppresses them).
PyObject* item(PyObject* d, PyObject* key) { return PyDict_GetItem(d, key); }

// What `d[key] if key in d else store.get(key, missing)` gives (borrowed), as nn.Module's attribute lookup finds a
// parameter or buffer: the instance attribute first, else the store.
PyObject* attribute_or_stored(PyObject* d, PyObject* store, PyObject* key, PyObject* missing) {
  if (PyObject* v = item(d, key)) return v;
  if (store != nullptr && PyDict_Check(store))
    if (PyObject* v = item(store, key)) return v;
  return missing;
}

bool truthy(PyObject* v) {
  const int t = PyObject_IsTrue(v);
  if (t < 0) throw py::error_already_set();
  return t != 0;
}

bool equal(PyObject* a, PyObject* b) {
  const int e = PyObject_RichCompareBool(a, b, Py_EQ);
  if (e < 0) throw py::error_already_set();
  return e != 0;
}

struct Dict {  // an owned instance __dict__
  explicit Dict(PyObject* m) : d(instance_dict(m)) {}
  ~Dict() { Py_XDECREF(d); }
  Dict(const Dict&) = delete;
  Dict& operator=(const Dict&) = delete;
  PyObject* d;
};

}  // namespace

namespace {

c10::StorageImpl* storage_of(const c10::TensorImpl* impl) {
  return impl->has_storage() ? impl->unsafe_storage().unsafeGetStorageImpl() : nullptr;
}

const void* data_of(const c10::StorageImpl* storage) { return storage ? storage->data_ptr().get() : nullptr; }

// The tensor objects recorded by live FoldSources (FoldSources::folded; held by them, so never a reused address);
// touched with the GIL held.
std::unordered_multiset<const PyObject*>& recorded() {
  static auto* set = new std::unordered_multiset<const PyObject*>();
  return *set;
}

}  // namespace

FoldSources::FoldSources(const py::list& tensors) {
  entries_.reserve(tensors.size());
  for (py::handle h : tensors) {
    if (!THPVariable_Check(h.ptr())) continue;
    const at::Tensor& t = THPVariable_Unpack(h.ptr());
    c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    // An inference tensor has no counter to read; a sparse or nested one no strides (and is never folded).
    if (!impl->version_counter().enabled() || impl->layout() != c10::kStrided || t.is_nested()) continue;
    using WeakStorage = c10::weak_intrusive_ptr<c10::StorageImpl>;
    entries_.push_back(Entry{py::reinterpret_borrow<py::object>(h), impl, impl->dtype(), impl->is_neg(),
                             impl->is_conj(),
                             storage_of(impl) ? impl->unsafe_storage().getWeakStorageImpl()
                                              : WeakStorage(c10::intrusive_ptr<c10::StorageImpl>()),
                             data_of(storage_of(impl)), impl->version_counter().current_version(),
                             impl->storage_offset(),
                             c10::SmallVector<int64_t, 5>(impl->sizes().begin(), impl->sizes().end()),
                             c10::SmallVector<int64_t, 5>(impl->strides().begin(), impl->strides().end())});
  }
  for (const Entry& e : entries_) recorded().insert(e.tensor.ptr());  // after anything that can throw
}

FoldSources::~FoldSources() {
  for (const Entry& e : entries_) {
    auto it = recorded().find(e.tensor.ptr());
    if (it != recorded().end()) recorded().erase(it);
  }
}

bool FoldSources::holds() const {
  // No early exit: the entries' reads are independent, so their cache misses overlap (the forward before this
  // one streamed the weights through the cache; resnet50 has 318 such tensors).
  bool same = true;
  for (const Entry& e : entries_) {
    const c10::TensorImpl* now = THPVariable_Unpack(e.tensor.ptr()).unsafeGetTensorImpl();
    const c10::VariableVersion& counter = now->version_counter();
    same &= (now == e.impl) & counter.enabled() &&
            (counter.current_version() == e.version) & (now->dtype() == e.dtype) & (now->is_neg() == e.neg) &
                (now->is_conj() == e.conj) & (storage_of(now) == e.storage._unsafe_get_target()) &
                (data_of(storage_of(now)) == e.data) & (now->storage_offset() == e.offset) &
                now->sizes().equals(e.sizes) & now->strides().equals(e.strides);
  }
  return same;
}

bool FoldSources::folded(const py::handle& tensor) { return recorded().count(tensor.ptr()) > 0; }

int structure_state(const py::list& children, const py::list& modules, const py::list& types,
                    const py::list& convs, const py::list& bns, const py::tuple& patched) {
  constexpr int kChanged = 0, kMatches = 1, kHooked = 2;
  const Names& k = names();
  // Each parent's children, the same objects in the same order: (module, tuple of its children).
  for (py::handle entry : children) {
    PyObject* m = PyTuple_GET_ITEM(entry.ptr(), 0);
    PyObject* kids = PyTuple_GET_ITEM(entry.ptr(), 1);
    Dict d(m);
    PyObject* now = d.d ? item(d.d, k.modules) : nullptr;
    if (now == nullptr || !PyDict_Check(now) || PyDict_GET_SIZE(now) != PyTuple_GET_SIZE(kids)) return kChanged;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(now, &pos, &key, &value))
      if (value != PyTuple_GET_ITEM(kids, i++)) return kChanged;
  }
  // Every module: its recorded type, no hooks of its own, no forward set on the instance (else kHooked, once the
  // rest is checked: the module path's units are still the recorded ones).
  const Py_ssize_t n = PyList_GET_SIZE(modules.ptr());
  if (PyList_GET_SIZE(types.ptr()) != n) return kChanged;
  bool hooked = false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* m = PyList_GET_ITEM(modules.ptr(), i);
    if (reinterpret_cast<PyObject*>(Py_TYPE(m)) != PyList_GET_ITEM(types.ptr(), i)) return kChanged;
    Dict d(m);
    if (d.d == nullptr) return kChanged;
    if (hooked) continue;
    for (PyObject* name : k.hooks) {
      PyObject* hooks = item(d.d, name);
      if (hooks == nullptr) return kChanged;
      hooked = hooked || truthy(hooks);
    }
    for (py::handle name : patched) {
      const int has = PyDict_Contains(d.d, name.ptr());
      if (has < 0) throw py::error_already_set();
      hooked = hooked || has != 0;
    }
  }
  // Every conv: (conv, weight, bias, padding, stride, dilation, groups) as recorded, padding_mode "zeros".
  PyObject* missing = Py_Ellipsis;  // never a parameter: a missing weight differs from any recorded one
  for (py::handle entry : convs) {
    PyObject* conv = PyTuple_GET_ITEM(entry.ptr(), 0);
    Dict d(conv);
    if (d.d == nullptr) return kChanged;
    PyObject* params = item(d.d, k.parameters);
    if (attribute_or_stored(d.d, params, k.weight, missing) != PyTuple_GET_ITEM(entry.ptr(), 1) ||
        attribute_or_stored(d.d, params, k.bias, missing) != PyTuple_GET_ITEM(entry.ptr(), 2))
      return kChanged;
    py::object mode = py::reinterpret_steal<py::object>(PyObject_GetAttr(conv, k.padding_mode));
    if (!mode) throw py::error_already_set();
    if (!equal(mode.ptr(), k.zeros)) return kChanged;
    for (int g = 0; g < 4; ++g) {
      py::object v = py::reinterpret_steal<py::object>(PyObject_GetAttr(conv, k.geometry[g]));
      if (!v) throw py::error_already_set();
      if (!equal(v.ptr(), PyTuple_GET_ITEM(entry.ptr(), 3 + g))) return kChanged;
    }
  }
  // Every BN: (bn, eps, weight, bias, running_mean, running_var) in eval mode, the recorded eps and tensor objects
  // (running statistics present).
  for (py::handle entry : bns) {
    PyObject* bn = PyTuple_GET_ITEM(entry.ptr(), 0);
    Dict d(bn);
    if (d.d == nullptr) return kChanged;
    PyObject* training = item(d.d, k.training);
    PyObject* eps = item(d.d, k.eps);
    if (training == nullptr || truthy(training) || eps == nullptr || !equal(eps, PyTuple_GET_ITEM(entry.ptr(), 1)))
      return kChanged;
    PyObject* params = item(d.d, k.parameters);
    if (attribute_or_stored(d.d, params, k.weight, missing) != PyTuple_GET_ITEM(entry.ptr(), 2) ||
        attribute_or_stored(d.d, params, k.bias, missing) != PyTuple_GET_ITEM(entry.ptr(), 3))
      return kChanged;
    PyObject* buffers = item(d.d, k.buffers);
    for (int i = 0; i < 2; ++i) {
      PyObject* v = attribute_or_stored(d.d, buffers, i == 0 ? k.running_mean : k.running_var, Py_None);
      if (v == Py_None || v != PyTuple_GET_ITEM(entry.ptr(), 4 + i)) return kChanged;
    }
  }
  return hooked ? kHooked : kMatches;
}

}  // namespace resnet_ext

// The frozen CPU forward's recorded programs (engine/cpu.py, `cpu_replay`): the operator calls of one forward, kept
// with their constant arguments and replayed from C++, without the Python that chose them.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace resnet_ext {

class __attribute__((visibility("hidden"))) CpuProgram {  // hidden: as pybind11 declares its own types
 public:
  // Appends a call of the registered operator `name` (overload `overload`) on one value per schema argument:
  // where slots[i] >= 0, argument i is value slot slots[i] (0: the program's input, else an earlier call's output),
  // else args[i], converted once to the argument's type. The call's one output becomes slot `out`, the next one;
  // -1 keeps none (a call that returns nothing, or an in-place op's, whose output is its argument's slot).
  void add(const std::string& name, const std::string& overload, const pybind11::sequence& args,
           const std::vector<int64_t>& slots, int64_t out);
  // Ends the program: its result is slot `result`; each slot is dropped after its last use.
  void finish(int64_t result);
  // The calls on input x, in order; the result slot's tensor.
  at::Tensor run(const at::Tensor& x) const;
  int64_t calls() const { return static_cast<int64_t>(steps_.size()); }

 private:
  struct Step {
    c10::OperatorHandle op;
    std::vector<c10::IValue> constants;  // per argument (None where the argument is a slot)
    std::vector<int64_t> slots;          // per argument: its slot, or -1
    int64_t out;
    std::vector<int64_t> drop;           // slots last used by this call
  };
  std::vector<Step> steps_;
  int64_t slots_ = 1, result_ = -1;
};

}  // namespace resnet_ext

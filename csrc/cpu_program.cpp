#include "cpu_program.h"

#include <torch/csrc/jit/python/pybind_utils.h>

#include <c10/util/Exception.h>

namespace resnet_ext {

void CpuProgram::add(const std::string& name, const std::string& overload, const pybind11::sequence& args,
                     const std::vector<int64_t>& slots, int64_t out) {
  TORCH_CHECK(result_ < 0, "CpuProgram.add: the program is finished");
  const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
  const auto& params = op.schema().arguments();
  TORCH_CHECK(args.size() == params.size() && slots.size() == params.size(), "CpuProgram.add: ", name,
              " takes ", params.size(), " arguments, got ", args.size(), " values and ", slots.size(), " slots");
  TORCH_CHECK(out < 0 || op.schema().returns().size() == 1, "CpuProgram.add: ", name, " returns ",
              op.schema().returns().size(), " values: out must be -1 (none kept)");
  TORCH_CHECK(out < 0 || out == slots_, "CpuProgram.add: out must be the next slot, ", slots_, ", got ", out);
  Step step{op, {}, slots, out, {}};
  for (size_t i = 0; i < params.size(); ++i) {
    if (slots[i] >= 0) {
      c10::TypePtr type = params[i].type();
      if (const auto optional = type->cast<c10::OptionalType>()) type = optional->getElementType();
      TORCH_CHECK(slots[i] < slots_ && type->kind() == c10::TypeKind::TensorType,
                  "CpuProgram.add: argument ", params[i].name(), " of ", name, " cannot be slot ", slots[i]);
      step.constants.emplace_back();
    } else {
      step.constants.push_back(torch::jit::toIValue(args[i], params[i].type()));
    }
  }
  if (out >= 0) ++slots_;
  steps_.push_back(std::move(step));
}

void CpuProgram::finish(int64_t result) {
  TORCH_CHECK(result_ < 0, "CpuProgram.finish: the program is finished");
  TORCH_CHECK(result >= 0 && result < slots_, "CpuProgram.finish: result must be a slot below ", slots_, ", got ",
              result);
  std::vector<int64_t> last(slots_, -1);
  for (size_t s = 0; s < steps_.size(); ++s)
    for (int64_t slot : steps_[s].slots)
      if (slot >= 0) last[slot] = static_cast<int64_t>(s);
  for (int64_t slot = 0; slot < slots_; ++slot)
    if (last[slot] >= 0 && slot != result) steps_[last[slot]].drop.push_back(slot);
  result_ = result;
}

at::Tensor CpuProgram::run(const at::Tensor& x) const {
  TORCH_CHECK(result_ >= 0, "CpuProgram.run: the program is not finished");
  std::vector<c10::IValue> values(slots_);
  values[0] = x;
  torch::jit::Stack stack;
  for (const Step& step : steps_) {
    stack.clear();
    for (size_t i = 0; i < step.slots.size(); ++i)
      stack.push_back(step.slots[i] >= 0 ? values[step.slots[i]] : step.constants[i]);
    step.op.callBoxed(stack);
    if (step.out >= 0) values[step.out] = std::move(stack.at(0));  // else its output, if any, is dropped
    stack.clear();
    for (int64_t slot : step.drop) values[slot] = c10::IValue();  // freed now, for the next calls' allocations
  }
  return values[result_].toTensor();
}

}  // namespace resnet_ext

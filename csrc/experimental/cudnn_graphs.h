// resnet_ext's cuDNN graphs (experimental/cudnn_graphs.cpp): what module.cpp binds and conv_bn_act calls.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace resnet_ext {
namespace cudnn_graphs {

// "" where cuDNN takes the pattern ("conv_stats", "dgrad_drelu_dbn", "wgrad", "conv_scale_shift[_add][_relu]")
// on this problem (x [N, C, H, W], weight [K, C, R, S], NHWC, dtype "float16" or "bfloat16", with or without the
// scale+shift+ReLU prologue), else why not. plans=false only validates the graph (no GPU needed); plans=true looks
// up the op's cached graph on the current CUDA device, building its execution plan first if no call has.
std::string probe(const std::string& pattern, const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                  const std::vector<int64_t>& stride, const std::vector<int64_t>& padding, bool prologue,
                  const std::string& dtype, bool plans);

// Whether conv_scale_shift may take these operands: x, w (KRSC) and the residual NHWC-dense, 16-bit, one dtype,
// 16-byte aligned, channels in multiples of 8, not empty. No GPU needed.
bool takes_scale_shift(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& residual);

// relu?(conv(x, w) * scale + shift + bias + residual) as one cuDNN graph, the epilogue in fp32 on the conv's fp32
// accumulator (scale and shift fp32 [K]); nullopt where the operands do not qualify or cuDNN has no engine for the
// graph (the caller runs the composition). Groups 1, dilation 1.
std::optional<at::Tensor> conv_scale_shift(const at::Tensor& x, const at::Tensor& w,
                                           const std::optional<at::Tensor>& bias,
                                           const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool relu, const at::Tensor& scale,
                                           const at::Tensor& shift);

}  // namespace cudnn_graphs
}  // namespace resnet_ext

// The fused training decomposition's cuDNN graphs (experimental/cudnn_train.cpp): what module.cpp binds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace resnet_ext {
namespace cudnn_train {

// "" where cuDNN takes the pattern ("conv_stats", "dgrad_drelu_dbn", "wgrad") on this problem (x [N, C, H, W],
// weight [K, C, R, S], NHWC, dtype "float16" or "bfloat16", with or without the scale+shift+ReLU prologue),
// else why not. plans=false only validates the graph (no GPU needed); plans=true looks up the op's cached graph on
// the current CUDA device, building its execution plan first if no call has.
std::string probe(const std::string& pattern, const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                  const std::vector<int64_t>& stride, const std::vector<int64_t>& padding, bool prologue,
                  const std::string& dtype, bool plans);

}  // namespace cudnn_train
}  // namespace resnet_ext

"""resnet_ext: torchvision-compatible ResNets with fused CUDA kernels (conv + BN + [add] + ReLU)."""
from .ops import build_info, conv_bn_act, explain, fold_bn, fold_bn_weights
from .switches import (autotune, bn_optin, cpu_conv1x1, cpu_direct, cpu_onednn_graph, cpu_prefetch, cpu_replay,
                       cpu_stem, cpu_winograd, fused_train, nhwc_max_pool, prefer_cudnn)
from .engine import explain_train
from .engine.units import path_counts, reset_path_counts, train_bn
from .bn_act import bn_act, convert_sync_batchnorm
from .engine.frozen import freeze, is_frozen, unfreeze
from .engine.cpu import (empty_cache as empty_cpu_cache, memory_stats as cpu_memory_stats,
                         set_memory_limit as set_cpu_memory_limit)
from .convert import from_torchvision, to_torchvision
from .models import (BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152,
                     resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2)

__version__ = "0.1.0"

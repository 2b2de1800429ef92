// Function multiversioning for the CPU loops: the build targets baseline x86-64, so each hot loop is compiled for
// AVX-512 and AVX2 (x86-64-v3: with FMA, which std::fma needs to be one instruction) as well and the best one for
// the CPU at hand is picked at load time (GCC target clones).
#pragma once

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define RESNET_EXT_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define RESNET_EXT_CLONES
#endif

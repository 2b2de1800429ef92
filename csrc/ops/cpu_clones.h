// Function multiversioning for the CPU loops: the build targets baseline x86-64, so each hot loop is compiled for
// AVX-512 and AVX2 as well and the best one for the CPU at hand is picked at load time (GCC target clones).
#pragma once

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define RESNET_EXT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RESNET_EXT_CLONES
#endif

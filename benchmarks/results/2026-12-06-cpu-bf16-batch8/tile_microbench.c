// The bf16 register tile alone, one core, A and B in cache (cycled over `rows` rows of A, B one panel of 64 or 48
// columns): cpu_gemm.h's 6 x 64 tile (vpbroadcastd of an A pair, vdpbf16ps into 24 accumulators), an 8 x 48 tile,
// the 6 x 64 tile with the depth loop unrolled by 4, and the 6 x 64 tile with no loads (registers only).
// Build and run: gcc -O2 -o /tmp/tile tile_microbench.c && /tmp/tile DEPTH ROWS   (x86-64 with AVX512-BF16)
// (Every loop over rows and vectors carries an unroll pragma: without them GCC -O2 keeps the accumulators in
// memory and the tile measured 70-93 GFLOP/s instead of 170-230.)
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
#define R 6
#define NV 4
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx512f,avx512bf16,avx512bw"),noinline))
void tile_a(const uint16_t* a, long lda, const uint16_t* b, long depth, float* c) {
  __m512 acc[R][NV];
  for(int r=0;r<R;r++)for(int j=0;j<NV;j++)acc[r][j]=_mm512_setzero_ps();
  for(long i=0;i<depth;i+=2){
    __m512i bv[NV];
    _Pragma("GCC unroll 4") for(int j=0;j<NV;j++) bv[j]=_mm512_loadu_si512(b+i*64+32*j);
    _Pragma("GCC unroll 8") for(int r=0;r<R;r++){int32_t p; memcpy(&p,a+r*lda+i,4); __m512i av=_mm512_set1_epi32(p);
      _Pragma("GCC unroll 4") for(int j=0;j<NV;j++) acc[r][j]=_mm512_dpbf16_ps(acc[r][j],(__m512bh)av,(__m512bh)bv[j]);}
  }
  for(int r=0;r<R;r++)for(int j=0;j<NV;j++)_mm512_storeu_ps(c+r*64+16*j,acc[r][j]);
}
// variant: 8 rows x 3 vectors (24 accs), fewer B loads per dp? (3 loads + 8 bcast per 24 dp)
__attribute__((target("avx512f,avx512bf16,avx512bw"),noinline))
void tile_b(const uint16_t* a, long lda, const uint16_t* b, long depth, float* c) {
  __m512 acc[8][3];
  for(int r=0;r<8;r++)for(int j=0;j<3;j++)acc[r][j]=_mm512_setzero_ps();
  for(long i=0;i<depth;i+=2){
    __m512i bv[3];
    _Pragma("GCC unroll 4") for(int j=0;j<3;j++) bv[j]=_mm512_loadu_si512(b+i*48+32*j);
    _Pragma("GCC unroll 8") for(int r=0;r<8;r++){int32_t p; memcpy(&p,a+r*lda+i,4); __m512i av=_mm512_set1_epi32(p);
      _Pragma("GCC unroll 4") for(int j=0;j<3;j++) acc[r][j]=_mm512_dpbf16_ps(acc[r][j],(__m512bh)av,(__m512bh)bv[j]);}
  }
  for(int r=0;r<8;r++)for(int j=0;j<3;j++)_mm512_storeu_ps(c+r*48+16*j,acc[r][j]);
}
// variant: 6x4 with k unrolled by 4 pairs
__attribute__((target("avx512f,avx512bf16,avx512bw"),noinline))
void tile_c(const uint16_t* a, long lda, const uint16_t* b, long depth, float* c) {
  __m512 acc[R][NV];
  for(int r=0;r<R;r++)for(int j=0;j<NV;j++)acc[r][j]=_mm512_setzero_ps();
  for(long i=0;i<depth;i+=8){
#pragma GCC unroll 4
   for(int u=0;u<4;u++){ long ii=i+2*u;
    __m512i bv[NV];
    _Pragma("GCC unroll 4") for(int j=0;j<NV;j++) bv[j]=_mm512_loadu_si512(b+ii*64+32*j);
    _Pragma("GCC unroll 8") for(int r=0;r<R;r++){int32_t p; memcpy(&p,a+r*lda+ii,4); __m512i av=_mm512_set1_epi32(p);
      _Pragma("GCC unroll 4") for(int j=0;j<NV;j++) acc[r][j]=_mm512_dpbf16_ps(acc[r][j],(__m512bh)av,(__m512bh)bv[j]);}
   }
  }
  for(int r=0;r<R;r++)for(int j=0;j<NV;j++)_mm512_storeu_ps(c+r*64+16*j,acc[r][j]);
}
// register-only peak: 24 accs, no loads in loop
__attribute__((target("avx512f,avx512bf16,avx512bw"),noinline))
void tile_peak(const uint16_t* a, long lda, const uint16_t* b, long depth, float* c) {
  __m512 acc[R][NV];
  for(int r=0;r<R;r++)for(int j=0;j<NV;j++)acc[r][j]=_mm512_setzero_ps();
  __m512i bv[NV]; for(int j=0;j<NV;j++) bv[j]=_mm512_loadu_si512(b+32*j);
  __m512i av=_mm512_loadu_si512(a);
  for(long i=0;i<depth;i+=2){
    _Pragma("GCC unroll 8") for(int r=0;r<R;r++){ __asm__ volatile("" : "+v"(av));
      _Pragma("GCC unroll 4") for(int j=0;j<NV;j++) acc[r][j]=_mm512_dpbf16_ps(acc[r][j],(__m512bh)av,(__m512bh)bv[j]);}
  }
  for(int r=0;r<R;r++)for(int j=0;j<NV;j++)_mm512_storeu_ps(c+r*64+16*j,acc[r][j]);
}
typedef void (*fn)(const uint16_t*, long, const uint16_t*, long, float*);
int main(int argc,char**argv){
  long depth=atol(argv[1]); long rows=atol(argv[2]); // rows of A cycled (multiple of 24)
  uint16_t*a=aligned_alloc(64,rows*depth*2+4096); uint16_t*b=aligned_alloc(64,depth*64*2+4096);
  for(long i=0;i<rows*depth;i++)a[i]=0x3f80; for(long i=0;i<depth*64;i++)b[i]=0x3f80;
  float c[8*64];
  fn fs[4]={tile_a,tile_b,tile_c,tile_peak}; const char*nm[4]={"6x4","8x3","6x4 unroll4","6x4 regs only"};
  int rr[4]={6,8,6,6};
  for(int rep=0;rep<2;rep++) for(int f=0;f<4;f++){
    long iters=0; double t0=now(), t;
    do { for(long r=0;r+rr[f]<=rows;r+=rr[f]) fs[f](a+r*depth,depth,b,depth,c); iters++; } while((t=now()-t0)<0.5);
    double flops=2.0*iters*(rows/rr[f])*rr[f]*(f==1?48:64)*depth;
    printf("%-16s depth %ld rows %ld: %.1f GFLOP/s\n",nm[f],depth,rows,flops/t/1e9);
  }
}

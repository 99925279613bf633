/*
 * Throughput of the shuffles the x86 GEMV kernels decode with, on the machine it runs on:
 * eight independent chains per instruction, time-stamp-counter ticks per instruction (compare
 * with the FMA line: two FMAs per cycle give half a cycle each). Not part of any build.
 *
 *   gcc -O2 -march=native shuffle_cost.c -o shuffle_cost && ./shuffle_cost
 *
 * Needs AVX-512 F, BW and VBMI. See docs/kernels.md, forty-third session.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <x86intrin.h>
#define N 100000000
static inline uint64_t t(){return __rdtsc();}
int main(){
  __m512i a=_mm512_set1_epi8(3),b=_mm512_set1_epi8(5),c=_mm512_set1_epi8(7),d=_mm512_set1_epi8(9);
  __m512i r0=a,r1=b,r2=c,r3=d,r4=a,r5=b,r6=c,r7=d;
  uint64_t s;
  // throughput of vpermt2b: 8 independent chains
  s=t();
  for(long k=0;k<N;k++){
    r0=_mm512_permutex2var_epi8(a,r0,b); r1=_mm512_permutex2var_epi8(a,r1,b);
    r2=_mm512_permutex2var_epi8(a,r2,b); r3=_mm512_permutex2var_epi8(a,r3,b);
    r4=_mm512_permutex2var_epi8(a,r4,b); r5=_mm512_permutex2var_epi8(a,r5,b);
    r6=_mm512_permutex2var_epi8(a,r6,b); r7=_mm512_permutex2var_epi8(a,r7,b);
    __asm__ volatile("" : "+v"(r0),"+v"(r1),"+v"(r2),"+v"(r3),"+v"(r4),"+v"(r5),"+v"(r6),"+v"(r7));
  }
  printf("vpermt2b: %.2f ticks/instr\n",(double)(t()-s)/N/8);
  s=t();
  for(long k=0;k<N;k++){
    r0=_mm512_permutexvar_epi8(r0,a); r1=_mm512_permutexvar_epi8(r1,a);
    r2=_mm512_permutexvar_epi8(r2,a); r3=_mm512_permutexvar_epi8(r3,a);
    r4=_mm512_permutexvar_epi8(r4,a); r5=_mm512_permutexvar_epi8(r5,a);
    r6=_mm512_permutexvar_epi8(r6,a); r7=_mm512_permutexvar_epi8(r7,a);
    __asm__ volatile("" : "+v"(r0),"+v"(r1),"+v"(r2),"+v"(r3),"+v"(r4),"+v"(r5),"+v"(r6),"+v"(r7));
  }
  printf("vpermb: %.2f ticks/instr\n",(double)(t()-s)/N/8);
  s=t();
  for(long k=0;k<N;k++){
    r0=_mm512_unpacklo_epi8(r0,a); r1=_mm512_unpacklo_epi8(r1,a);
    r2=_mm512_unpacklo_epi8(r2,a); r3=_mm512_unpacklo_epi8(r3,a);
    r4=_mm512_unpacklo_epi8(r4,a); r5=_mm512_unpacklo_epi8(r5,a);
    r6=_mm512_unpacklo_epi8(r6,a); r7=_mm512_unpacklo_epi8(r7,a);
    __asm__ volatile("" : "+v"(r0),"+v"(r1),"+v"(r2),"+v"(r3),"+v"(r4),"+v"(r5),"+v"(r6),"+v"(r7));
  }
  printf("vpunpcklbw: %.2f ticks/instr\n",(double)(t()-s)/N/8);
  __m512 f0=_mm512_set1_ps(1),f1=f0,f2=f0,f3=f0,f4=f0,f5=f0,f6=f0,f7=f0; __m512 x=_mm512_set1_ps(0.999f);
  s=t();
  for(long k=0;k<N;k++){
    f0=_mm512_fmadd_ps(f0,x,x); f1=_mm512_fmadd_ps(f1,x,x); f2=_mm512_fmadd_ps(f2,x,x); f3=_mm512_fmadd_ps(f3,x,x);
    f4=_mm512_fmadd_ps(f4,x,x); f5=_mm512_fmadd_ps(f5,x,x); f6=_mm512_fmadd_ps(f6,x,x); f7=_mm512_fmadd_ps(f7,x,x);
    __asm__ volatile("" : "+v"(f0),"+v"(f1),"+v"(f2),"+v"(f3),"+v"(f4),"+v"(f5),"+v"(f6),"+v"(f7));
  }
  printf("vfmadd: %.2f ticks/instr\n",(double)(t()-s)/N/8);
  __m512i q0=_mm512_set1_epi32(3),q1=q0,q2=q0,q3=q0,q4=q0,q5=q0,q6=q0,q7=q0; __m512 tb=_mm512_set1_ps(2), tb2=_mm512_set1_ps(3);
  s=t();
  for(long k=0;k<N;k++){
    f0=_mm512_permutexvar_ps(q0,tb); f1=_mm512_permutexvar_ps(q1,tb); f2=_mm512_permutexvar_ps(q2,tb); f3=_mm512_permutexvar_ps(q3,tb);
    f4=_mm512_permutexvar_ps(q4,tb); f5=_mm512_permutexvar_ps(q5,tb); f6=_mm512_permutexvar_ps(q6,tb); f7=_mm512_permutexvar_ps(q7,tb);
    __asm__ volatile("" : "+v"(f0),"+v"(f1),"+v"(f2),"+v"(f3),"+v"(f4),"+v"(f5),"+v"(f6),"+v"(f7)); __asm__ volatile("" : "+v"(q0),"+v"(q1),"+v"(q2),"+v"(q3),"+v"(q4),"+v"(q5),"+v"(q6),"+v"(q7));
  }
  printf("vpermps: %.2f ticks/instr\n",(double)(t()-s)/N/8);
  s=t();
  for(long k=0;k<N;k++){
    f0=_mm512_permutex2var_ps(tb,q0,tb2); f1=_mm512_permutex2var_ps(tb,q1,tb2); f2=_mm512_permutex2var_ps(tb,q2,tb2); f3=_mm512_permutex2var_ps(tb,q3,tb2);
    f4=_mm512_permutex2var_ps(tb,q4,tb2); f5=_mm512_permutex2var_ps(tb,q5,tb2); f6=_mm512_permutex2var_ps(tb,q6,tb2); f7=_mm512_permutex2var_ps(tb,q7,tb2);
    __asm__ volatile("" : "+v"(f0),"+v"(f1),"+v"(f2),"+v"(f3),"+v"(f4),"+v"(f5),"+v"(f6),"+v"(f7)); __asm__ volatile("" : "+v"(q0),"+v"(q1),"+v"(q2),"+v"(q3),"+v"(q4),"+v"(q5),"+v"(q6),"+v"(q7));
  }
  printf("vpermt2ps: %.2f ticks/instr\n",(double)(t()-s)/N/8);
  int tbl[256]; for(int i=0;i<256;i++) tbl[i]=i;
  __m512i g0=_mm512_set1_epi32(3),g1=g0,g2=g0,g3=g0;
  s=t();
  for(long k=0;k<N/10;k++){
    f0=_mm512_i32gather_ps(g0,(float*)tbl,4); f1=_mm512_i32gather_ps(g1,(float*)tbl,4);
    f2=_mm512_i32gather_ps(g2,(float*)tbl,4); f3=_mm512_i32gather_ps(g3,(float*)tbl,4);
    __asm__ volatile("" : "+v"(f0),"+v"(f1),"+v"(f2),"+v"(f3),"+v"(g0),"+v"(g1),"+v"(g2),"+v"(g3));
  }
  printf("vgatherdps zmm: %.2f ticks/instr\n",(double)(t()-s)/(N/10)/4);
  float r=0; float tmp[16]; _mm512_storeu_ps(tmp,_mm512_add_ps(f0,f7)); r=tmp[0];
  __m512i z=_mm512_add_epi8(r0,r7); int8_t zz[64]; _mm512_storeu_si512(zz,z);
  /* Keeps the chains live. */
  printf("(%f %d)\n",r,zz[0]);
}

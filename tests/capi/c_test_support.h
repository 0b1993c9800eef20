/* tests/capi/c_test_support.h
 * What the C tests of liblowbit_c share: CHECK (counts a failure, prints
 * the condition and a formatted reason, and goes on), the failure count
 * main() returns on, and a fixed-seed xorshift generator of uniform values
 * in [-1, 1) (each program sets rng_state if it wants its own stream). */
#ifndef LOWBIT_C_TEST_SUPPORT_H
#define LOWBIT_C_TEST_SUPPORT_H

#include <stdint.h>
#include <stdio.h>

static int failures = 0;
#define CHECK(cond, ...)                                                \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                     \
      fprintf(stderr, "\n");                                            \
      ++failures;                                                       \
    }                                                                   \
  } while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

#endif

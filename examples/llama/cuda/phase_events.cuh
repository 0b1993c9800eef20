// examples/llama/cuda/phase_events.cuh
// The phase clock of a CUDA run (llama_train --profile): each mark of
// phase_profile.hpp records a CUDA event on the model's stream, so an
// interval is the GPU's time between two points of the queue, not the
// host's time to queue the work between them. Events are created once and
// reused from step to step; the step's end waits for its last event (one
// host wait per step that an unprofiled run does not make, so a profiled
// run may be slightly slower where the host would otherwise queue the next
// step's work early). An interval also holds any time the GPU sat idle
// waiting for the host (for instance after the forward's wait for the
// loss), which is time the step takes all the same.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include <lowbit/cuda/check.cuh>

#include "../phase_profile.hpp"

namespace llama {
namespace gpu {

class cuda_phase_recorder final : public phase_recorder {
 public:
  explicit cuda_phase_recorder(cudaStream_t s) : s_(s) {}
  ~cuda_phase_recorder() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  cuda_phase_recorder(const cuda_phase_recorder&) = delete;
  cuda_phase_recorder& operator=(const cuda_phase_recorder&) = delete;

 protected:
  void stamp(size_t index) override {
    while (events_.size() <= index) {
      cudaEvent_t e = nullptr;
      LOWBIT_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    LOWBIT_CUDA_CHECK(cudaEventRecord(events_[index], s_));
  }
  void intervals_ms(size_t n, double* out) override {
    if (n == 0) return;
    LOWBIT_CUDA_CHECK(cudaEventSynchronize(events_[n - 1]));
    for (size_t i = 0; i + 1 < n; ++i) {
      float ms = 0;
      LOWBIT_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
      out[i] = double(ms);
    }
  }

 private:
  cudaStream_t s_;
  std::vector<cudaEvent_t> events_;
};

}  // namespace gpu
}  // namespace llama

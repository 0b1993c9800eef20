// examples/llama/layer_recompute.hpp
// Which layers a checkpointing backward recomputes, for the CPU and CUDA
// models alike. With activation checkpointing only the residual stream
// entering each layer is kept, and one layer buffer holds a layer's
// intermediates at a time; the backward recomputes each layer's before
// using them. The forward leaves the last layer's in that buffer, so the
// first layer the backward reaches needs no recompute, unless a backward
// has run since (its recomputes overwrote the buffer).
#pragma once

#include <cstdint>

namespace llama {

class layer_recompute {
 public:
  layer_recompute(bool checkpointing, int n_layers) : checkpointing_(checkpointing), last_layer_(n_layers - 1) {}

  // The forward has run every layer: the buffer holds the last one's.
  void forward_done() { last_layer_fresh_ = true; }

  // Before layer l's backward (layers in decreasing order): whether l's
  // intermediates must be recomputed first.
  bool before_backward(int l) {
    const bool recompute = checkpointing_ && !(l == last_layer_ && last_layer_fresh_);
    last_layer_fresh_ = false;
    if (recompute) ++count_;
    return recompute;
  }

  // Layers recomputed since construction: n_layers - 1 per backward after
  // a forward.
  int64_t count() const { return count_; }

 private:
  bool checkpointing_;
  int last_layer_;
  bool last_layer_fresh_ = false;
  int64_t count_ = 0;
};

}  // namespace llama

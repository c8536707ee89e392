// The libtorch headers every core file needs: tensors, autograd and the grad-mode guards. Not <torch/torch.h>, whose
// C++ frontend (modules, optimizers, data loaders) the core does not use and which costs each file seconds more to
// parse; the few files that need a frontend piece include it themselves. Both builds precompile this header once
// (binding.gyp's torch_pch action, CMake's target_precompile_headers), which is most of what makes the addon compile
// in minutes. Include guards, not #pragma once: the header is also compiled on its own as the precompiled header.
#ifndef TUNEKIT_TORCH_HEADERS_H
#define TUNEKIT_TORCH_HEADERS_H
#include <torch/autograd.h>
#include <torch/types.h>
#include <torch/utils.h>
#endif

// Emulator stand-in for the CUDA runtime header (see emu_cuda.h).
#pragma once
#include "emu_cuda.h"

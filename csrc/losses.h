// CPU kernels of the four mmit-fast losses (declarations; see losses.cpp for the math).
#pragma once
#include <pybind11/pybind11.h>

namespace mmit {
void register_losses(pybind11::module_ &m);
}

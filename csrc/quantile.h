// CPU kernel of the exact per-unit quantile (declarations; see quantile.cpp for the method).
#pragma once
#include <pybind11/pybind11.h>

namespace mmit {
void register_quantile(pybind11::module_ &m);
}

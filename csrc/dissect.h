// CPU kernel of Network Dissection's IoU sums (declarations; see dissect.cpp for the math).
#pragma once
#include <pybind11/pybind11.h>

namespace mmit {
void register_dissect(pybind11::module_ &m);
}

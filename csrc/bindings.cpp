// pybind11 module mmit_fast._C: CPU kernels of mmit-fast.
#include <pybind11/pybind11.h>

#include "dissect.h"
#include "losses.h"
#include "quantile.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
    m.doc() = "mmit-fast CPU kernels (C++/OpenMP)";
#ifdef _OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
    mmit::register_losses(m);
    mmit::register_dissect(m);
    mmit::register_quantile(m);
}

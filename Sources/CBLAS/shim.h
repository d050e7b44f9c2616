// The CBLAS interface of OpenBLAS. The include path comes from pkg-config (`openblas.pc`),
// so this picks OpenBLAS's own cblas.h (which also declares openblas_set_num_threads),
// not whichever cblas.h Debian's alternatives system happens to point at.
#include <cblas.h>

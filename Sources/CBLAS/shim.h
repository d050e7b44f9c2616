// The CBLAS interface of OpenBLAS. The include path comes from pkg-config (`openblas.pc`),
// so this picks OpenBLAS's own cblas.h (which also declares openblas_set_num_threads),
// not whichever cblas.h Debian's alternatives system happens to point at.
#include <cblas.h>

// A software prefetch hint, which Swift cannot spell: the decode path streams K and V rows
// and asks for the rows a few ahead so that both cores keep enough loads in flight.
// A prefetch never faults, whatever the address.
static inline void attentionkit_prefetch(const void *address) {
    __builtin_prefetch(address, 0, 3);
}

"""Row views for the inner loops of numba CPU kernels, without reference counting.

`w[r]` in njit code builds a view that holds a reference to w's buffer: an atomic increment and
decrement of one shared counter per row, and again for every array passed to a function that is
not inlined. In a parallel loop over a matrix's rows both threads hit that counter's cache line,
and on short rows (896 columns: 28 blocks of Q5_0) the traffic cost a third of a decode
product's time. A borrowed row is the same view with no owner: valid while the matrix it points
into is alive, which a kernel's caller guarantees for the kernel's whole run.

    borrowed_row(a (M, N) C-contiguous, i) -> (N,) view of a[i], unowned
    ROW_RANGE: the rows of one call of the decode products (dot_f32.rows_f32, matmul_q8.rows_q8),
               the work item of their parallel loops: calls are per range, not per row
"""
from numba import types
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

ROW_RANGE = 16


@intrinsic
def borrowed_row(typingctx, arr, i):
    """a[i] of a C-contiguous 2-D array as an unowned 1-D view (no bounds check)."""
    if not isinstance(arr, types.Array) or arr.ndim != 2 or arr.layout != "C":
        return None
    row_type = types.Array(arr.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        matrix = make_array(sig.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        columns = builder.extract_value(matrix.shape, 1)
        row = make_array(row_type)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(arr.dtype)))
        populate_array(row, data=builder.gep(matrix.data, [builder.mul(index, columns)]), shape=[columns],
                       strides=[itemsize], itemsize=itemsize, meminfo=None)
        return row._getvalue()
    return row_type(arr, i), codegen

"""Explicit 16-lane SIMD vectors for numba CPU kernels.

LLVM's auto-vectorizer handles flat float loops well, but not the block layouts of GGML
quantization: it vectorizes across blocks with byte gathers, or leaves a horizontal reduction
per 32-weight block. These intrinsics let a kernel say what llama.cpp says with C intrinsics:
"load 16 nibbles, widen them to floats, multiply-add into a vector accumulator". They lower to
plain LLVM vector IR, so the backend picks the instructions for the host (AVX-512, AVX2, NEON).

Two value types exist inside njit code only:
  f32x16 -- <16 x float>
  i32x16 -- <16 x i32>

Every load takes (array, index) where index counts elements of that array, so a uint8 array is
addressed by byte offset. Loads are unaligned and unchecked: callers keep index + width in bounds.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_VF = ir.VectorType(_F32, LANES)
_VI = ir.VectorType(_I32, LANES)


class F32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


class I32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="i32x16")


f32x16 = F32x16Type()
i32x16 = I32x16Type()


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VF)


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VI)


def _check_array(arr):
    if not isinstance(arr, types.Array) or arr.ndim != 1:
        raise TypeError(f"simd loads need a 1-D array, got {arr}")


def _element_pointer(context, builder, arrty, arr, idx, idxty, pointee):
    """Pointer to arr[idx] reinterpreted as `pointee*`."""
    ary = context.make_array(arrty)(context, builder, arr)
    idx = context.cast(builder, idx, idxty, types.intp)
    return builder.bitcast(builder.gep(ary.data, [idx]), pointee.as_pointer())


def _splat(builder, scalar, vecty):
    undef = ir.Constant(vecty, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vecty.count), [0] * vecty.count)
    return builder.shuffle_vector(one, undef, mask)


def _intrinsic_fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


# --------------------------------------------------------------------------- constructors


@intrinsic
def vzero(typingctx):
    """f32x16 of zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_VF, [0.0] * LANES)
    return f32x16(), codegen


@intrinsic
def vsplat(typingctx, scalar):
    """f32x16 with every lane = scalar (any real number type)."""
    def codegen(context, builder, sig, args):
        s = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, s, _VF)
    return f32x16(scalar), codegen


# --------------------------------------------------------------------------- loads and stores


@intrinsic
def vload(typingctx, arr, idx):
    """16 float32 starting at element idx of arr (arr may be float32, or uint8 for a byte offset)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], _VF)
        return builder.load(ptr, align=1)
    return f32x16(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, vec):
    """arr[idx:idx+16] = vec (float32 lanes)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], _VF)
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return types.void(arr, idx, vec), codegen


def _int_load(bits, signed):
    src = ir.VectorType(ir.IntType(bits), LANES)

    def typer(typingctx, arr, idx):
        _check_array(arr)

        def codegen(context, builder, sig, args):
            ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], src)
            raw = builder.load(ptr, align=1)
            return builder.sext(raw, _VI) if signed else builder.zext(raw, _VI)
        return i32x16(arr, idx), codegen
    return typer


load_u8x16 = intrinsic(_int_load(8, False))
load_u8x16.__doc__ = "16 bytes at element idx, zero-extended to i32 lanes."
load_i8x16 = intrinsic(_int_load(8, True))
load_i8x16.__doc__ = "16 signed bytes at element idx, sign-extended to i32 lanes."


@intrinsic
def load_f16x16(typingctx, arr, idx):
    """16 IEEE half floats at element idx (a byte offset for uint8 arrays), widened to f32x16."""
    _check_array(arr)
    halves = ir.VectorType(ir.HalfType(), LANES)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], halves)
        return builder.fpext(builder.load(ptr, align=1), _VF)
    return f32x16(arr, idx), codegen


@intrinsic
def load_bf16x16(typingctx, arr, idx):
    """16 bfloat16 at element idx (a byte offset for uint8 arrays), widened to f32x16: each is the
    high half of a float32, so widening is a 16-bit shift, exact for every value (NaNs included)."""
    _check_array(arr)
    shorts = ir.VectorType(ir.IntType(16), LANES)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], shorts)
        wide = builder.zext(builder.load(ptr, align=1), _VI)
        return builder.bitcast(builder.shl(wide, ir.Constant(_VI, [16] * LANES)), _VF)
    return f32x16(arr, idx), codegen


def _kv_is_half(arr) -> bool:
    """A KV cache array's storage: float32, or float16 kept as its uint16 bits (numba has no
    float16 on the CPU); any number of dimensions."""
    if not isinstance(arr, types.Array):
        raise TypeError(f"a KV cache is an array, not {arr}")
    if arr.dtype not in (types.float32, types.uint16):
        raise TypeError(f"a KV cache is float32 or float16 bits (uint16), not {arr.dtype}")
    return arr.dtype == types.uint16


@intrinsic
def vload_kv(typingctx, arr, idx):
    """16 values of a KV cache from element idx as f32x16: a float32 cache's as they are, a
    float16 cache's (uint16 bits) widened (one vcvtph2ps per 8 with F16C). arr is 1-D."""
    _check_array(arr)
    half = _kv_is_half(arr)
    pointee = ir.VectorType(ir.HalfType(), LANES) if half else _VF

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], pointee)
        value = builder.load(ptr, align=1)
        return builder.fpext(value, _VF) if half else value
    return f32x16(arr, idx), codegen


@intrinsic
def kv_element(typingctx, arr, x):
    """x (any real number) as an element of the KV cache `arr`: a float32, or for a float16
    cache the uint16 bits of the nearest half (round to nearest even, as NumPy's astype)."""
    half = _kv_is_half(arr)

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[1], sig.args[1], types.float32)
        return builder.bitcast(builder.fptrunc(value, ir.HalfType()), ir.IntType(16)) if half else value
    return (types.uint16 if half else types.float32)(arr, x), codegen


def _halves_to_floats(builder, word):
    """An i32 read as two IEEE halves -> <2 x float>. The word goes into a zeroed vector register
    first: a scalar half load would otherwise become vpinsrw, which merges into (and so waits for)
    whatever that register last held, and chains independent blocks together."""
    wide = builder.insert_element(ir.Constant(ir.VectorType(_I32, 4), [0] * 4), word, ir.Constant(_I32, 0))
    halves = builder.bitcast(wide, ir.VectorType(ir.HalfType(), 8))
    pair = builder.shuffle_vector(halves, halves, ir.Constant(ir.VectorType(_I32, 2), [0, 1]))
    return builder.fpext(pair, ir.VectorType(_F32, 2))


def _load_word(context, builder, sig, args, shift):
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    i = context.cast(builder, args[1], sig.args[1], types.intp)
    if shift:
        i = builder.sub(i, ir.Constant(i.type, shift))
    return builder.load(builder.bitcast(builder.gep(ary.data, [i]), _I32.as_pointer()), align=1)


def _check_bytes(arr):
    _check_array(arr)
    if arr.dtype.bitwidth != 8:
        raise TypeError("half-float scale loads address a uint8/int8 array by byte")


@intrinsic
def load_f16(typingctx, arr, idx):
    """The IEEE half at byte idx of a uint8 array, as float32.
    Reads 4 bytes from idx: the two after the half must be readable (a block's leading scale)."""
    _check_bytes(arr)

    def codegen(context, builder, sig, args):
        pair = _halves_to_floats(builder, _load_word(context, builder, sig, args, 0))
        return builder.extract_element(pair, ir.Constant(_I32, 0))
    return types.float32(arr, idx), codegen


@intrinsic
def load_f16_tail(typingctx, arr, idx):
    """As load_f16, reading the 4 bytes that end with the half (a block's trailing scale)."""
    _check_bytes(arr)

    def codegen(context, builder, sig, args):
        pair = _halves_to_floats(builder, _load_word(context, builder, sig, args, 2))
        return builder.extract_element(pair, ir.Constant(_I32, 1))
    return types.float32(arr, idx), codegen


@intrinsic
def load_f16_pair(typingctx, arr, idx):
    """The two IEEE halves at bytes idx..idx+3 (a block's d and m), as a (float32, float32) tuple."""
    _check_bytes(arr)
    pair_type = types.UniTuple(types.float32, 2)

    def codegen(context, builder, sig, args):
        pair = _halves_to_floats(builder, _load_word(context, builder, sig, args, 0))
        first = builder.extract_element(pair, ir.Constant(_I32, 0))
        second = builder.extract_element(pair, ir.Constant(_I32, 1))
        return context.make_tuple(builder, pair_type, [first, second])
    return pair_type(arr, idx), codegen


@intrinsic
def load_f32(typingctx, arr, idx):
    """The float32 at element idx (a byte offset for uint8 arrays)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], _F32)
        return builder.load(ptr, align=1)
    return types.float32(arr, idx), codegen


@intrinsic
def load_bits16(typingctx, arr, idx, first, value):
    """Sixteen bits of the little-endian u32 at byte idx of a uint8 array as i32 lanes: lane i =
    value where bit first+i is set, else 0 (the fifth bits of a Q5_0/Q5_1 block, 16 at a time).
    A broadcast, a test against one bit per lane and a select: no per-lane shifts."""
    _check_bytes(arr)

    def codegen(context, builder, sig, args):
        word = _splat(builder, _load_word(context, builder, sig, args, 0), _VI)
        first_bit = _splat(builder, context.cast(builder, args[2], sig.args[2], types.int32), _VI)
        lane_bit = builder.shl(ir.Constant(_VI, [1] * LANES),
                               builder.add(first_bit, ir.Constant(_VI, list(range(LANES)))))
        is_set = builder.icmp_unsigned("!=", builder.and_(word, lane_bit), ir.Constant(_VI, [0] * LANES))
        lane_value = _splat(builder, context.cast(builder, args[3], sig.args[3], types.int32), _VI)
        return builder.select(is_set, lane_value, ir.Constant(_VI, [0] * LANES))
    return i32x16(arr, idx, first, value), codegen


# --------------------------------------------------------------------------- float arithmetic


def _binary(op):
    def typer(typingctx, a, b):
        if a != f32x16 or b != f32x16:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return f32x16(a, b), codegen
    return typer


vadd = intrinsic(_binary("fadd"))
vsub = intrinsic(_binary("fsub"))
vmul = intrinsic(_binary("fmul"))
vdiv = intrinsic(_binary("fdiv"))


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, fused, lane by lane."""
    def codegen(context, builder, sig, args):
        fn = _intrinsic_fn(builder, "llvm.fma.v16f32", _VF, [_VF, _VF, _VF])
        return builder.call(fn, args)
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vmax(typingctx, a, b):
    def codegen(context, builder, sig, args):
        fn = _intrinsic_fn(builder, "llvm.maxnum.v16f32", _VF, [_VF, _VF])
        return builder.call(fn, args)
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vabs(typingctx, a):
    def codegen(context, builder, sig, args):
        return builder.call(_intrinsic_fn(builder, "llvm.fabs.v16f32", _VF, [_VF]), args)
    return f32x16(f32x16), codegen


@intrinsic
def vcopysign(typingctx, magnitude, sign):
    """|magnitude| with the sign of sign, lane by lane."""
    def codegen(context, builder, sig, args):
        return builder.call(_intrinsic_fn(builder, "llvm.copysign.v16f32", _VF, [_VF, _VF]), args)
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def hsum(typingctx, a):
    """Sum of the 16 lanes (reassociated: a tree, not left to right)."""
    def codegen(context, builder, sig, args):
        fn = _intrinsic_fn(builder, "llvm.vector.reduce.fadd.v16f32", _F32, [_F32, _VF])
        return builder.call(fn, [ir.Constant(_F32, 0.0), args[0]], fastmath=("reassoc",))
    return types.float32(f32x16), codegen


@intrinsic
def store_hsum4(typingctx, arr, idx, a, b, c, d):
    """arr[idx:idx+4] = (sum a, sum b, sum c, sum d): four horizontal sums in one shuffle tree
    (15 operations where four separate reductions take ~32)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        va, vb, vc, vd = args[2:]

        def mask(lanes):
            return ir.Constant(ir.VectorType(_I32, len(lanes)), lanes)

        def fold(x, y, width):     # [x | y] halves added: width lanes per input -> width/2 each
            half = width // 2
            lo = builder.shuffle_vector(x, y, mask(list(range(half)) + [width + i for i in range(half)]))
            hi = builder.shuffle_vector(x, y, mask([half + i for i in range(half)]
                                                   + [width + half + i for i in range(half)]))
            return builder.fadd(lo, hi)

        ab = fold(va, vb, 16)                       # 8 lanes of a's partial sums, 8 of b's
        cd = fold(vc, vd, 16)
        quarters = [g * 8 + i for g in range(4) for i in range(4)]         # lanes 0-3 of each 8
        s = builder.fadd(builder.shuffle_vector(ab, cd, mask(quarters)),
                         builder.shuffle_vector(ab, cd, mask([q + 4 for q in quarters])))
        undef = ir.Constant(_VF, ir.Undefined)
        t = builder.fadd(builder.shuffle_vector(s, undef, mask([0, 1, 4, 5, 8, 9, 12, 13])),
                         builder.shuffle_vector(s, undef, mask([2, 3, 6, 7, 10, 11, 14, 15])))
        t_undef = ir.Constant(ir.VectorType(_F32, 8), ir.Undefined)
        r = builder.fadd(builder.shuffle_vector(t, t_undef, mask([0, 2, 4, 6])),
                         builder.shuffle_vector(t, t_undef, mask([1, 3, 5, 7])))
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.VectorType(_F32, 4))
        builder.store(r, ptr, align=1)
        return context.get_dummy_value()
    return types.void(arr, idx, f32x16, f32x16, f32x16, f32x16), codegen


@intrinsic
def hmax(typingctx, a):
    """Largest of the 16 lanes."""
    def codegen(context, builder, sig, args):
        fn = _intrinsic_fn(builder, "llvm.vector.reduce.fmax.v16f32", _F32, [_VF])
        return builder.call(fn, [args[0]])
    return types.float32(f32x16), codegen


@intrinsic
def vexp(typingctx, a):
    """exp() of each lane: Cephes-style range reduction and a degree-6 polynomial.

    Relative error below 2e-7 over [-87, 88]; inputs are clamped to that range, so exp(-inf)
    gives ~1e-38 rather than 0 (harmless where it feeds a softmax or a sigmoid).
    """
    def codegen(context, builder, sig, args):
        def c(v):
            return ir.Constant(_VF, [float(v)] * LANES)

        fma = _intrinsic_fn(builder, "llvm.fma.v16f32", _VF, [_VF, _VF, _VF])
        rint = _intrinsic_fn(builder, "llvm.rint.v16f32", _VF, [_VF])
        fmin = _intrinsic_fn(builder, "llvm.minnum.v16f32", _VF, [_VF, _VF])
        fmax = _intrinsic_fn(builder, "llvm.maxnum.v16f32", _VF, [_VF, _VF])
        x = builder.call(fmax, [builder.call(fmin, [args[0], c(88.3762626647949)]), c(-87.33654475)])
        # x = n*ln2 + r, |r| <= ln2/2, with ln2 split in two for precision
        n = builder.call(rint, [builder.fmul(x, c(1.44269504088896341))])
        r = builder.call(fma, [n, c(-0.693359375), x])
        r = builder.call(fma, [n, c(2.12194440e-4), r])
        p = c(1.9875691500e-4)
        for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = builder.call(fma, [p, r, c(coef)])
        r2 = builder.fmul(r, r)
        p = builder.call(fma, [p, r2, builder.fadd(r, c(1.0))])
        # 2^n by building the exponent field directly
        ni = builder.fptosi(n, _VI)
        two_n = builder.bitcast(builder.shl(builder.add(ni, ir.Constant(_VI, [127] * LANES)),
                                            ir.Constant(_VI, [23] * LANES)), _VF)
        return builder.fmul(p, two_n)
    return f32x16(f32x16), codegen


# --------------------------------------------------------------------------- integer lanes


def _int_scalar_op(op):
    def typer(typingctx, v, k):
        if v != i32x16 or not isinstance(k, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            s = context.cast(builder, args[1], sig.args[1], types.int32)
            return getattr(builder, op)(args[0], _splat(builder, s, _VI))
        return i32x16(v, k), codegen
    return typer


iand = intrinsic(_int_scalar_op("and_"))       # v & k
ishr = intrinsic(_int_scalar_op("lshr"))       # v >> k (logical)
ishl = intrinsic(_int_scalar_op("shl"))        # v << k
isub = intrinsic(_int_scalar_op("sub"))        # v - k


@intrinsic
def ior(typingctx, a, b):
    """a | b, lane by lane."""
    def codegen(context, builder, sig, args):
        return builder.or_(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def itof(typingctx, v):
    """Signed i32 lanes to float32 lanes."""
    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _VF)
    return f32x16(i32x16), codegen


# --------------------------------------------------------------------------- lanes and K-quant scales


@intrinsic
def vlane(typingctx, v, j):
    """Lane j of v as a float32 scalar (j a loop index that LLVM unrolls to a constant: a splat of
    it is one broadcast from a register, not the scalar decode it replaces)."""
    if v != f32x16 or not isinstance(j, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1], types.int32))
    return types.float32(v, j), codegen


def _k_scales_typer(mins: bool, paired: bool = False):
    """The eight 6-bit scales (mins=False) or mins (mins=True) of the Q4_K/Q5_K super-block at byte
    o, in lanes 0..7 and lanes 8..15 0 (q4_k_scales, q4_k_mins); or each in lanes 2j and 2j+1,
    one lane per 16 weights (q4_k_scales_x2, q4_k_mins_x2). GGML packs them in 12 bytes at o+4, as
    scale j<4: b[j] & 63          min j<4: b[j+4] & 63
    scale j>=4: b[j+4] & 15 | (b[j-4] >> 6) << 4     min j>=4: b[j+4] >> 4 | (b[j] >> 6) << 4
    so a shuffle of the 16 bytes at o+4 (12 scale bytes and 4 of the quants, never read) lines
    up each lane's two source bytes, and per-lane shifts and masks finish it."""
    def typer(typingctx, arr, idx):
        _check_bytes(arr)

        def codegen(context, builder, sig, args):
            at = builder.add(context.cast(builder, args[1], sig.args[1], types.intp), ir.Constant(ir.IntType(64), 4))
            ptr = _element_pointer(context, builder, sig.args[0], args[0], at, types.intp,
                                   ir.VectorType(ir.IntType(8), LANES))
            b = builder.zext(builder.load(ptr, align=1), _VI)

            def const(values):
                return ir.Constant(_VI, values)

            def shuffle(lanes):
                return builder.shuffle_vector(b, b, const(lanes))
            first = [4, 5, 6, 7] if mins else [0, 1, 2, 3]
            low = shuffle(first + [8, 9, 10, 11] + [0] * 8)                   # j<4: b[j] or b[j+4]; j>=4: b[j+4]
            high = shuffle([0, 0, 0, 0] + ([4, 5, 6, 7] if mins else [0, 1, 2, 3]) + [0] * 8)
            low = builder.lshr(low, const([0] * 4 + ([4] if mins else [0]) * 4 + [0] * 8))
            low = builder.and_(low, const([63] * 4 + [15] * 4 + [0] * 8))
            high = builder.and_(builder.shl(builder.lshr(high, const([6] * 16)), const([4] * 16)),
                                const([0] * 4 + [0x30] * 4 + [0] * 8))
            lanes = builder.or_(low, high)
            return builder.shuffle_vector(lanes, lanes, const([j // 2 for j in range(LANES)])) if paired else lanes
        return i32x16(arr, idx), codegen
    return typer


q4_k_scales = intrinsic(_k_scales_typer(False))
q4_k_scales.__doc__ = _k_scales_typer.__doc__
q4_k_mins = intrinsic(_k_scales_typer(True))
q4_k_mins.__doc__ = _k_scales_typer.__doc__
q4_k_scales_x2 = intrinsic(_k_scales_typer(False, paired=True))
q4_k_scales_x2.__doc__ = _k_scales_typer.__doc__
q4_k_mins_x2 = intrinsic(_k_scales_typer(True, paired=True))
q4_k_mins_x2.__doc__ = _k_scales_typer.__doc__


__all__ = [
    "LANES", "f32x16", "i32x16", "vzero", "vsplat", "vload", "vstore", "load_u8x16", "load_i8x16",
    "load_f16x16", "load_bf16x16", "load_f16", "load_f16_tail", "load_f16_pair", "load_f32", "load_bits16",
    "vadd", "vsub", "vmul", "vdiv", "vfma",
    "vmax", "vabs", "vcopysign", "hsum", "store_hsum4", "hmax",
    "vexp", "iand", "ishr", "ishl", "isub", "ior", "itof", "vlane", "q4_k_scales", "q4_k_mins", "q4_k_scales_x2",
    "q4_k_mins_x2",
]

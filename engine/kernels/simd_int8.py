"""Byte vectors for integer dot products in numba CPU kernels (the int8-activation path).

The model of llama.cpp's AVX2 kernels: unpack 32 quantized weights into a byte vector, multiply
them with 32 int8 activations and sum groups of four products into eight int32 lanes
(`dpbusd`: AVX-512 VNNI's vpdpbusd when the host has it, a portable widening sequence when not),
then convert and scale those lanes in float with the block's scales.

Types inside njit code only:
  u8x32  -- <32 x i8> (read as unsigned or signed by the operation)
  i32x8  -- <8 x i32>
  f32x8  -- <8 x float>

Loads take (array, index) with index counting elements of the array (bytes for uint8/int8 arrays).
They are unaligned and unchecked.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

from .cpu_features import HAS_AVX2, HAS_AVX512_VNNI, HAS_AVX_VNNI
from .simd import _element_pointer, _intrinsic_fn, _load_word, _splat

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_VB = ir.VectorType(_I8, 32)
_VB16 = ir.VectorType(_I8, 16)
_VI = ir.VectorType(_I32, 8)
_VF = ir.VectorType(_F32, 8)



class _VectorType(types.Type):
    def __init__(self, name):
        super().__init__(name=name)


u8x32 = _VectorType("u8x32")
i32x8 = _VectorType("i32x8")
f32x8 = _VectorType("f32x8")
_LLVM_TYPES = {"u8x32": _VB, "i32x8": _VI, "f32x8": _VF}


@register_model(_VectorType)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LLVM_TYPES[fe_type.name])


def _check_array(arr):
    if not isinstance(arr, types.Array) or arr.ndim != 1:
        raise TypeError(f"byte-vector loads need a 1-D array, got {arr}")


# --------------------------------------------------------------------------- byte vectors

def _vector_load_typer(vector_type, llvm_type, align):
    """A load of one vector at element idx of a 1-D array (bytes, int32 or float32)."""
    def typer(typingctx, arr, idx):
        _check_array(arr)

        def codegen(context, builder, sig, args):
            ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], llvm_type)
            return builder.load(ptr, align=align)
        return vector_type(arr, idx), codegen
    return typer


load_u8x32 = intrinsic(_vector_load_typer(u8x32, _VB, 1))     # 32 bytes at element idx


@intrinsic
def load_nibbles(typingctx, arr, idx):
    """The 32 nibbles of 16 bytes at idx: low nibbles of bytes 0..15, then their high nibbles
    (the order of weights in a Q4_0/Q4_1 block)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], _VB16)
        raw = builder.load(ptr, align=1)
        lo = builder.and_(raw, ir.Constant(_VB16, [15] * 16))
        hi = builder.lshr(raw, ir.Constant(_VB16, [4] * 16))
        return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 32), list(range(32))))
    return u8x32(arr, idx), codegen


@intrinsic
def load_bits32(typingctx, arr, idx, value):
    """The 32 bits of the little-endian u32 at byte idx as bytes: byte i = value where bit i is set,
    else 0 (the fifth bits of a Q5_0/Q5_1 block, llama.cpp's bytes_from_bits_32)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        word = builder.bitcast(_load_word(context, builder, sig, args, 0), ir.VectorType(_I8, 4))
        byte_of_bit = ir.Constant(ir.VectorType(_I32, 32), [i // 8 for i in range(32)])
        spread = builder.shuffle_vector(word, word, byte_of_bit)
        bit = builder.and_(spread, ir.Constant(_VB, [1 << (i % 8) for i in range(32)]))
        chosen = builder.icmp_unsigned("!=", bit, ir.Constant(_VB, [0] * 32))
        byte_value = _splat(builder, context.cast(builder, args[2], sig.args[2], types.uint8), _VB)
        return builder.select(chosen, byte_value, ir.Constant(_VB, [0] * 32))
    return u8x32(arr, idx, value), codegen


def _byte_scalar_op(op):
    def typer(typingctx, v, k):
        if v != u8x32 or not isinstance(k, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            s = context.cast(builder, args[1], sig.args[1], types.uint8)
            return getattr(builder, op)(args[0], _splat(builder, s, _VB))
        return u8x32(v, k), codegen
    return typer


band = intrinsic(_byte_scalar_op("and_"))    # v & k
bshr = intrinsic(_byte_scalar_op("lshr"))    # v >> k (logical)
bshl = intrinsic(_byte_scalar_op("shl"))     # v << k
bxor = intrinsic(_byte_scalar_op("xor"))     # v ^ k


@intrinsic
def bor(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.or_(args[0], args[1])
    return u8x32(u8x32, u8x32), codegen


@intrinsic
def babs(typingctx, a):
    """|a| of signed bytes (pabsb): the unsigned operand of a signed-by-signed dpbusd."""
    def codegen(context, builder, sig, args):
        fn = _intrinsic_fn(builder, "llvm.abs.v32i8", _VB, [_VB, ir.IntType(1)])
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])
    return u8x32(u8x32), codegen


@intrinsic
def bsign(typingctx, a, b):
    """a with the sign of b, 0 where b is 0 (psignb): with babs, dpbusd(acc, babs(w), bsign(x, w))
    sums signed w * signed x (llama.cpp's mul_sum_i8_pairs)."""
    def codegen(context, builder, sig, args):
        a, b = args
        zero = ir.Constant(_VB, [0] * 32)
        negated = builder.select(builder.icmp_signed("<", b, zero), builder.sub(zero, a), a)
        return builder.select(builder.icmp_signed("==", b, zero), zero, negated)
    return u8x32(u8x32, u8x32), codegen


# --------------------------------------------------------------------------- int32 and float lanes

@intrinsic
def dpbusd(typingctx, acc, a, b):
    """acc + sums of four products: lane i += sum_{j<4} a[4i+j] (unsigned) * b[4i+j] (signed).

    Every caller's unsigned bytes are at most 128 (nibbles, 5- and 6-bit values, |w| of a signed
    byte), so two products never pass an int16: on AVX2 without VNNI this is llama.cpp's pair of
    vpmaddubsw (pairs into int16) and vpmaddwd by ones (pairs of those into int32), exact here.
    The generic widening sequence, for hosts with neither, costs ~3x the float32 kernel."""
    def codegen(context, builder, sig, args):
        acc, a, b = args
        if HAS_AVX512_VNNI or HAS_AVX_VNNI:
            name = "llvm.x86.avx512.vpdpbusd.256" if HAS_AVX512_VNNI else "llvm.x86.avx2.vpdpbusd.256"
            fn = _intrinsic_fn(builder, name, _VI, [_VI, _VI, _VI])
            return builder.call(fn, [acc, builder.bitcast(a, _VI), builder.bitcast(b, _VI)])
        if HAS_AVX2:
            i16x16 = ir.VectorType(ir.IntType(16), 16)
            pairs = builder.call(_intrinsic_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", i16x16, [_VB, _VB]), [a, b])
            ones = ir.Constant(i16x16, [1] * 16)
            quads = builder.call(_intrinsic_fn(builder, "llvm.x86.avx2.pmadd.wd", _VI, [i16x16, i16x16]),
                                 [pairs, ones])
            return builder.add(acc, quads)
        wide = ir.VectorType(_I32, 32)
        prod = builder.mul(builder.zext(a, wide), builder.sext(b, wide))
        parts = [builder.shuffle_vector(prod, prod, ir.Constant(_VI, [4 * i + j for i in range(8)])) for j in range(4)]
        return builder.add(acc, builder.add(builder.add(parts[0], parts[1]), builder.add(parts[2], parts[3])))
    return i32x8(i32x8, u8x32, u8x32), codegen


load_i32x8 = intrinsic(_vector_load_typer(i32x8, _VI, 4))     # 8 int32 at element idx
load_f32x8 = intrinsic(_vector_load_typer(f32x8, _VF, 4))     # 8 float32 at element idx


@intrinsic
def isub8(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.sub(args[0], args[1])
    return i32x8(i32x8, i32x8), codegen


@intrinsic
def ishl8(typingctx, a, k):
    """a << k in every lane (a constant k becomes one shift by an immediate)."""
    def codegen(context, builder, sig, args):
        return builder.shl(args[0], _splat(builder, context.cast(builder, args[1], sig.args[1], types.int32), _VI))
    return i32x8(i32x8, k), codegen


@intrinsic
def izero8(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VI, [0] * 8)
    return i32x8(), codegen


@intrinsic
def itof8(typingctx, v):
    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _VF)
    return f32x8(i32x8), codegen


@intrinsic
def vzero8(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VF, [0.0] * 8)
    return f32x8(), codegen


@intrinsic
def vsplat8(typingctx, s):
    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32), _VF)
    return f32x8(s), codegen


@intrinsic
def vsplat8x2(typingctx, lo, hi):
    """[lo]*4 + [hi]*4: one scale for the lanes of bytes 0..15, another for bytes 16..31."""
    def codegen(context, builder, sig, args):
        a = _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32), _VF)
        b = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32), _VF)
        return builder.shuffle_vector(a, b, ir.Constant(_VI, [0, 1, 2, 3, 8, 9, 10, 11]))
    return f32x8(lo, hi), codegen


@intrinsic
def vfma8(typingctx, a, b, c):
    """a * b + c."""
    def codegen(context, builder, sig, args):
        return builder.call(_intrinsic_fn(builder, "llvm.fma.v8f32", _VF, [_VF, _VF, _VF]), args)
    return f32x8(f32x8, f32x8, f32x8), codegen


@intrinsic
def vmul8(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])
    return f32x8(f32x8, f32x8), codegen


@intrinsic
def vadd8(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return f32x8(f32x8, f32x8), codegen


@intrinsic
def hsum8(typingctx, a):
    def codegen(context, builder, sig, args):
        fn = _intrinsic_fn(builder, "llvm.vector.reduce.fadd.v8f32", _F32, [_F32, _VF])
        return builder.call(fn, [ir.Constant(_F32, 0.0), args[0]], fastmath=("reassoc",))
    return types.float32(f32x8), codegen


__all__ = ["u8x32", "i32x8", "f32x8", "load_u8x32", "load_nibbles", "load_bits32", "band",
           "bshr", "bshl", "bxor", "bor", "babs", "bsign", "dpbusd", "load_i32x8", "isub8", "ishl8", "izero8", "itof8",
           "load_f32x8", "vzero8", "vsplat8", "vsplat8x2", "vfma8", "vmul8", "vadd8", "hsum8"]

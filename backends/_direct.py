"""Direct stride-1 convolution kernels for the NumPy backend, compiled for this CPU.

The grid convolution (backends/numpy.py) sums kh·kw matrix products over shifted
windows of one padded input. With 32 channels each product has K = 32: BLAS loads and
stores its output tile for every one of them and packs the large operand each time,
and reaches half the machine's rate. These kernels keep a block of results in
registers while they sum over every input channel and kernel tap, and store it once:
the register-blocked direct convolution that oneDNN and XNNPACK use on CPUs.
- forward (and dL/dx, the same convolution of the padded dL/dy with the flipped
  kernel): blocks of _OB output channels by _WV vectors of output positions, read
  from the grid buffer of `_padded_grid` in place, the bias added in the registers,
  written straight into the output's rows (no columns, no product buffer, no crop);
- weight gradient: blocks of _OB_W output channels by _TAPS_W taps, summed over
  chunks of _CHUNK_W positions of dL/dy on the input's grid, with the bias gradient.

They are written in LLVM IR through llvmlite (which Numba is built on) because the
block of accumulators must stay in registers, which neither NumPy nor Numba can
express. One kernel is compiled per layer geometry (the taps' offsets are constants
of the code), in about 0.1 s, kept for the process and its machine code cached on
disk for the next. A layer is split over a pool of as many threads as NumPy's BLAS
uses; the backend keeps small products on one BLAS thread (`_blas.serial`), because
OpenBLAS's idle workers spin for about 0.1 s after a threaded call and take a core
from these threads for that time.

`usable(dtype)` is False where llvmlite is missing or cannot target this machine, for
dtypes other than float32 and float64, or with BACKENDNN_DIRECT=0; the backend then
takes its BLAS products as before.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_LANES = {"f": 8, "d": 4}  # float32 and float64 lanes of an AVX2 register
_OB = 4  # output channels per register block
_WV = 2  # vectors of lanes per register block
_OB_W, _TAPS_W = 3, 3  # weight gradient: output channels by taps per register block
_CHUNK_W = 1024  # weight gradient: positions summed while they stay in cache
_THREADED_MIN = 1 << 22  # multiply-adds below which a layer runs on the calling thread
_PARTS = 4  # parts of a layer's rows (or positions) per thread
# "llvm": (binding, target machine maker) or False, with "why"; "checking" during the
# look-up; "threads"; "pool": (pid, executor); compiled kernels by (kind, key)
_STATE = {}
_LOCK = threading.RLock()  # compiling; _agrees compiles inside _llvm's hold


def _llvm():
    """(llvmlite.binding, a function making target machines for this CPU), or None
    where llvmlite is missing, too old (before the new pass manager, 0.44), or its
    first kernels do not agree with NumPy. Looked up once per process; other threads
    wait for the first."""
    if "llvm" not in _STATE:
        with _LOCK:
            if "llvm" not in _STATE:
                _STATE["llvm"] = _load()
    return _STATE["llvm"] or None


def _load():
    """_llvm's value; why not, in _STATE["why"]."""
    if os.environ.get("BACKENDNN_DIRECT", "1") == "0":
        _STATE["why"] = "BACKENDNN_DIRECT=0"
        return False
    try:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features()

        def machine():  # one per engine: an engine frees its machine with it
            return target.create_target_machine(cpu=cpu, features=features.flatten(), opt=3)

        _STATE["checking"] = (llvm, machine)  # what _compile uses for _agrees' kernels
        agrees = _agrees()
    except Exception as e:  # noqa: BLE001 (no usable LLVM: BLAS products instead)
        _STATE["why"] = f"{type(e).__name__}: {e}"
        return False
    finally:
        _STATE.pop("checking", None)
    if not agrees:
        _STATE["why"] = "the first kernels disagree with NumPy"
        return False
    return (llvm, machine)


def _agrees() -> bool:
    """One small convolution and its weight gradient, in float32 and float64, against
    NumPy."""
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((3, 40)).astype(dt)  # 3 channels, rows of 6 on a grid
        w = rng.standard_normal((5, 3, 2, 2)).astype(dt)
        g = rng.standard_normal((5, 30)).astype(dt)
        y = np.empty((5, 1, 4, 5), dt)
        conv(x, 5, 6, w, (1, 1), y, np.arange(5, dtype=dt))
        taps = [(i, j, i * 6 + j) for i in range(2) for j in range(2)]
        want = sum(np.einsum("oc,cp->op", w[:, :, i, j], x[:, off:off + 24])
                   for i, j, off in taps).reshape(5, 4, 6)[:, :, :5]
        gw, gb = weight_grad(g, x, 25, (2, 2), (1, 1), 6, bias=True)
        want_gw = np.stack([g[:, :25] @ x[:, off:off + 25].T for _, _, off in taps], -1)
        if not (np.allclose(y[:, 0], want + np.arange(5).reshape(5, 1, 1), 1e-4, 1e-4)
                and np.allclose(gw.reshape(5, 3, 4), want_gw, 1e-4, 1e-4)
                and np.allclose(gb, g[:, :25].sum(axis=1), 1e-4, 1e-4)):
            return False
    return True


class _Emitter:
    """An LLVM function under construction: types, counted loops, vector loads and
    stores, and a loop carrying values (the accumulators) in registers."""

    def __init__(self, name, letter, n_pointers, n_ints):
        from llvmlite import ir

        self.ir = ir
        self.t = ir.FloatType() if letter == "f" else ir.DoubleType()
        self.i64 = ir.IntType(64)
        self.lanes, self.item = _LANES[letter], 4 if letter == "f" else 8
        self.vec = ir.VectorType(self.t, self.lanes)
        self.mod = ir.Module(name=name)
        args = [self.t.as_pointer()] * n_pointers + [self.i64] * n_ints
        self.fn = ir.Function(self.mod, ir.FunctionType(ir.VoidType(), args), name=name)
        for a in self.fn.args[:n_pointers]:
            a.add_attribute("noalias")
        suffix = "f32" if letter == "f" else "f64"
        self.fma = {
            1: ir.Function(self.mod, ir.FunctionType(self.t, [self.t] * 3),
                           f"llvm.fma.{suffix}"),
            self.lanes: ir.Function(self.mod, ir.FunctionType(self.vec, [self.vec] * 3),
                                    f"llvm.fma.v{self.lanes}{suffix}")}
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))

    def const(self, v):
        return self.ir.Constant(self.i64, v)

    def zero(self, lanes):
        ty = self.vec if lanes > 1 else self.t
        return self.ir.Constant(ty, [0.0] * lanes if lanes > 1 else 0.0)

    def loop(self, lo, hi, body, carried=()):
        """A counted loop lo <= i < hi. body(i, values) emits at the builder's position
        and returns the carried values for the next iteration; returns their values
        after the loop."""
        b = self.b
        pre = b.block
        head, inner, done = (self.fn.append_basic_block() for _ in range(3))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(self.i64)
        i.add_incoming(lo, pre)
        phis = []
        for v in carried:
            p = b.phi(v.type)
            p.add_incoming(v, pre)
            phis.append(p)
        b.cbranch(b.icmp_signed("<", i, hi), inner, done)
        b.position_at_end(inner)
        new = body(i, phis) or ()
        for p, v in zip(phis, new):
            p.add_incoming(v, b.block)
        i.add_incoming(b.add(i, self.const(1)), b.block)
        b.branch(head)
        b.position_at_end(done)
        return phis

    def splat(self, value, lanes):
        if lanes == 1:
            return value
        ir, b = self.ir, self.b
        i32 = ir.IntType(32)
        v = b.insert_element(ir.Constant(self.vec, ir.Undefined), value, ir.Constant(i32, 0))
        return b.shuffle_vector(v, ir.Constant(self.vec, ir.Undefined),
                                ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))

    def _pointer(self, base, index, lanes):
        p = self.b.gep(base, [index], inbounds=True)
        return p if lanes == 1 else self.b.bitcast(p, self.vec.as_pointer())

    def load(self, base, index, lanes):
        return self.b.load(self._pointer(base, index, lanes), align=self.item)

    def store(self, value, base, index, lanes):
        self.b.store(value, self._pointer(base, index, lanes), align=self.item)

    def fmadd(self, a, x, acc, lanes):
        return self.b.call(self.fma[lanes], [a, x, acc])

    def text(self):
        self.b.ret_void()
        return str(self.mod)


def _forward_ir(name, letter, taps, ob, wv, full, tail, orem, has_bias):
    """The LLVM IR of a forward kernel.

    void name(T* x, T* w, T* bias, T* y, i64 row0, i64 row1, i64 ho, i64 x_img,
              i64 x_row, i64 x_c, i64 nc, i64 nob, i64 y_o, i64 y_n, i64 y_r)

    For each output row `row` in [row0, row1) (image row // ho, row row % ho), each
    of the `nob` blocks of `ob` output channels (then a block of `orem`) and each of
    the `full` blocks of wv·lanes columns (then `tail` columns; rows narrower than a
    block are taken two at a time), T float (letter "f") or double ("d"):
        y[o·y_o + n·y_n + r·y_r + col] = bias[o] + sum over c < nc and taps t of
            w[((o // ob·nc + c)·T + t)·ob + o % ob]
            · x[n·x_img + r·x_row + c·x_c + col + taps[t]]
    """
    e = _Emitter(name, letter, 4, 11)
    b, const, lanes = e.b, e.const, e.lanes
    x, w, bias, y, row0, row1, ho, x_img, x_row, x_c, nc, nob, y_o, y_n, y_r = e.fn.args
    ntaps = len(taps)

    def block(bases, blk, col, width, nv, nout):
        """nout <= ob channels from blk·ob by nv vectors of `width` lanes from col, in
        each output row of `bases` ((x index, y index) of its first column)."""
        first = b.mul(blk, const(ob))
        nacc = len(bases) * nv
        if has_bias:
            init = [e.splat(e.load(bias, b.add(first, const(o)), 1), width)
                    for o in range(nout) for _ in range(nacc)]
        else:
            init = [e.zero(width)] * (nout * nacc)
        wblk = b.mul(blk, b.mul(nc, const(ntaps * ob)))

        def channel(c, acc):
            xcs = [b.add(b.add(xrow, b.mul(c, x_c)), col) for xrow, _ in bases]
            wc = b.add(wblk, b.mul(c, const(ntaps * ob)))
            acc = list(acc)
            for t, off in enumerate(taps):
                xs = [e.load(x, b.add(xc, const(off + v * width)), width)
                      for xc in xcs for v in range(nv)]
                for o in range(nout):
                    wb = e.splat(e.load(w, b.add(wc, const(t * ob + o)), 1), width)
                    for k in range(nacc):
                        acc[o * nacc + k] = e.fmadd(wb, xs[k], acc[o * nacc + k], width)
            return acc

        acc = e.loop(const(0), nc, channel, init)
        for o in range(nout):
            oy = b.mul(b.add(first, const(o)), y_o)
            for r, (_, yrow) in enumerate(bases):
                yo = b.add(b.add(yrow, oy), col)
                for v in range(nv):
                    e.store(acc[o * nacc + r * nv + v], y, b.add(yo, const(v * width)),
                            width)

    def rows_body(rows):
        bases = []
        for row in rows:
            n = b.sdiv(row, ho)
            r = b.sub(row, b.mul(n, ho))
            bases.append((b.add(b.mul(n, x_img), b.mul(r, x_row)),
                          b.add(b.mul(n, y_n), b.mul(r, y_r))))

        def blk_body(blk, _, nout=ob):
            if full:
                e.loop(const(0), const(full),
                       lambda j, _: block(bases, blk, b.mul(j, const(wv * lanes)),
                                          lanes, wv, nout))
            col = full * wv * lanes
            if tail >= lanes:
                block(bases, blk, const(col), lanes, tail // lanes, nout)
            if tail % lanes:
                block(bases, blk, const(col + tail - tail % lanes), 1, tail % lanes, nout)
        e.loop(const(0), nob, blk_body)
        if orem:
            blk_body(nob, (), orem)

    # rows narrower than a block: a block spans `together` rows, so that it still has
    # wv vectors of accumulators (one vector of 8 has too few to hide the FMA latency)
    together = max(1, wv // (tail // lanes)) if not full and tail >= lanes else 1
    groups = b.sdiv(b.sub(row1, row0), const(together))
    e.loop(const(0), groups, lambda q, _: rows_body(
        [b.add(b.add(row0, b.mul(q, const(together))), const(k)) for k in range(together)]))
    if together > 1:
        e.loop(b.add(row0, b.mul(groups, const(together))), row1,
               lambda row, _: rows_body([row]))
    return e.text()


def _weight_grad_ir(name, letter, groups, ob, chunk, orem, has_bias):
    """The LLVM IR of a weight-gradient kernel.

    void name(T* gy, T* x, T* out, T* bsum, i64 p0, i64 p1, i64 gy_o, i64 x_c, i64 nc,
              i64 nob)

    For every output channel o (`nob` blocks of `ob`, then `orem`), input channel
    c < nc and tap t (the taps come in `groups`; a group's sums share the loads of
    dL/dy), over positions p0 <= p < p1 in chunks of `chunk` positions:
        out[((o·nc + c)·T + t)·lanes + p % lanes] += gy[o·gy_o + p] · x[c·x_c + p + tap]
        bsum[o·lanes + p % lanes] += gy[o·gy_o + p]     (if has_bias)
    (positions past the last full vector go to lane 0). A chunk of dL/dy and of the
    input stays in cache while every block of channels and taps sums over it.
    """
    e = _Emitter(name, letter, 4, 6)
    b, const, lanes = e.b, e.const, e.lanes
    gy, x, out, bsum, p0, p1, gy_o, x_c, nc, nob = e.fn.args
    ntaps = sum(len(g) for g in groups)

    def block(lo, hi, blk, c, first_tap, group, nout):
        """Sums of nout channels from blk·ob, input channel c, the taps of group; or,
        with group None, the sums of dL/dy alone (the bias gradient)."""
        gyo = [b.mul(b.add(b.mul(blk, const(ob)), const(o)), gy_o) for o in range(nout)]
        xc = b.mul(c, x_c) if group is not None else None
        nvec = b.sdiv(b.sub(hi, lo), const(lanes))
        vend = b.add(lo, b.mul(nvec, const(lanes)))
        width_k = 1 if group is None else len(group)

        def sums(width):
            def step(p, acc):
                g = [e.load(gy, b.add(gyo[o], p), width) for o in range(nout)]
                if group is None:
                    return [b.fadd(a, v) for a, v in zip(acc, g)]
                acc = list(acc)
                for k, tap in enumerate(group):
                    xv = e.load(x, b.add(b.add(xc, p), const(tap)), width)
                    for o in range(nout):
                        acc[o * width_k + k] = e.fmadd(g[o], xv, acc[o * width_k + k], width)
                return acc
            return step

        init = [e.zero(lanes)] * (nout * width_k)
        vstep = sums(lanes)
        acc = e.loop(const(0), nvec,
                     lambda q, a: vstep(b.add(lo, b.mul(q, const(lanes))), a), init)
        rest = e.loop(vend, hi, sums(1), [e.zero(1)] * (nout * width_k))
        for o in range(nout):
            og = b.add(b.mul(blk, const(ob)), const(o))
            for k in range(width_k):
                if group is None:
                    dest, at = bsum, b.mul(og, const(lanes))
                else:
                    t = first_tap + k
                    dest = out
                    at = b.mul(b.add(b.mul(b.add(b.mul(og, nc), c), const(ntaps)),
                                     const(t)), const(lanes))
                e.store(b.fadd(e.load(dest, at, lanes), acc[o * width_k + k]),
                        dest, at, lanes)
                e.store(b.fadd(e.load(dest, at, 1), rest[o * width_k + k]), dest, at, 1)

    def chunk_body(q, _):
        lo = b.add(p0, b.mul(q, const(chunk)))
        hi = b.select(b.icmp_signed("<", b.add(lo, const(chunk)), p1),
                      b.add(lo, const(chunk)), p1)

        def blk_body(blk, _, nout=ob):
            if has_bias:
                block(lo, hi, blk, None, 0, None, nout)

            def channel(c, _):
                first = 0
                for group in groups:
                    block(lo, hi, blk, c, first, group, nout)
                    first += len(group)
            e.loop(const(0), nc, channel)
        e.loop(const(0), nob, blk_body)
        if orem:
            blk_body(nob, (), orem)

    nchunks = b.sdiv(b.add(b.sub(p1, p0), const(chunk - 1)), const(chunk))
    e.loop(const(0), nchunks, chunk_body)
    return e.text()


def _cache_path(text, tm):
    """Where the machine code of the IR `text` is kept between processes: a file named
    by a hash of the IR, the CPU and llvmlite's version, in BACKENDNN_CACHE_DIR or
    the user's cache folder (~/.cache/backendnn); None without a home folder."""
    import hashlib

    import llvmlite
    llvm = (_STATE.get("llvm") or _STATE["checking"])[0]
    root = os.environ.get("BACKENDNN_CACHE_DIR")
    if not root:
        home = os.path.expanduser("~")
        cache = os.environ.get("XDG_CACHE_HOME") or (
            os.path.join(home, ".cache") if os.path.isabs(home) else None)
        if cache is None:
            return None
        root = os.path.join(cache, "backendnn")
    ident = "\n".join((llvmlite.__version__, llvm.get_host_cpu_name(),
                       llvm.get_host_cpu_features().flatten(), str(tm.triple), text))
    return os.path.join(root, "direct-" + hashlib.sha256(ident.encode()).hexdigest() + ".o")


def _compile(kind, key):
    """(engine, ctypes function) of one kernel: machine code from the cache when a
    process compiled it before, else the IR optimised and compiled (and cached)."""
    llvm, machine = _STATE.get("llvm") or _STATE["checking"]
    tm = machine()
    make, nargs = {"forward": (_forward_ir, (4, 11)), "weights": (_weight_grad_ir, (4, 6))}[kind]
    text = make(kind, *key)
    path = _cache_path(text, tm)
    try:
        with open(path, "rb") as f:
            cached = f.read() or None
    except (OSError, TypeError):  # none kept yet, or no folder to keep it in
        cached = None
    mod = llvm.parse_assembly(text)
    mod.verify()
    if cached is None:
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
        pb.getModulePassManager().run(mod, pb)

    def keep(_module, code):
        if path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(code)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: compile again next time

    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.set_object_cache(keep, lambda _module: cached)
    engine.finalize_object()
    proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nargs[0]
                                     + [ctypes.c_int64] * nargs[1]))
    return engine, proto(engine.get_function_address(kind))


def _kernel(kind, key):
    """The compiled kernel of `kind` for `key`, compiled on first use."""
    k = _STATE.get((kind, key))
    if k is None:
        if "checking" not in _STATE and _llvm() is None:
            raise RuntimeError(f"the direct kernels are not usable here: {_STATE.get('why')}")
        with _LOCK:
            k = _STATE.get((kind, key))
            if k is None:
                k = _STATE[(kind, key)] = _compile(kind, key)
    return k[1]


def _threads() -> int:
    """Threads to split a layer over: as many as NumPy's BLAS had when first asked."""
    n = _STATE.get("threads")
    if n is None:
        from . import _blas
        n = _STATE["threads"] = max(1, _blas.threads())
    return n


def _threads_for(macs, items) -> int:
    """Threads for a layer of `macs` multiply-adds over `items` units to split (rows,
    chunks): one below _THREADED_MIN, where a hand-off to a pool thread (75-90 µs
    here) costs more than it saves."""
    return 1 if macs < _THREADED_MIN else max(1, min(_threads(), items))


def _pool(workers):
    """The process's pool of worker threads for the kernels (a new one in a child made
    by fork, which does not inherit the parent's threads)."""
    pool = _STATE.get("pool")
    if pool is None or pool[0] != os.getpid():
        pool = _STATE["pool"] = (os.getpid(), ThreadPoolExecutor(
            workers, thread_name_prefix="backendnn"))
    return pool[1]


def _run(work, items, threads):
    """work(item, slot) for item in range(items), on the calling thread (slot 0) and
    threads - 1 workers of the pool (slots 1, 2, ...), each taking the next item in
    turn until none is left."""
    if threads <= 1 or items == 1:
        for i in range(items):
            work(i, 0)
        return
    todo, lock = iter(range(items)), threading.Lock()

    def take(slot):
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            work(i, slot)

    helpers = [_pool(threads - 1).submit(take, k) for k in range(1, threads)]
    take(0)
    for f in helpers:
        f.result()


def usable(dtype) -> bool:
    """Whether the kernels run for arrays of `dtype` (float32 or float64, in this
    machine's byte order) here."""
    dt = np.dtype(dtype)
    return dt.isnative and dt.char in _LANES and _llvm() is not None


def conv(src, hs, ws, weights, dilation, out, bias):
    """out (O, N, Ho, Wo) = the stride-1 convolution of the grid buffer `src` (C,
    lead + N·Hs·Ws + tail; see _padded_grid) with weights (O, C, kh, kw) (any strides),
    plus bias (O,) if given; float32 or float64 (`usable`). Output rows are split
    into parts that the calling thread and the pool's workers take in turn, so that a
    core the machine takes away for a while delays one part only."""
    o, n, ho, wo = out.shape
    c, kh, kw = weights.shape[1:]
    if out.size == 0:
        return out
    dt, item = out.dtype, out.itemsize
    if src.dtype != dt or src.strides[1] != item or out.strides[3] != item:
        raise ValueError("the direct convolution needs one dtype and unit-stride rows")
    taps = tuple(i * dilation[0] * ws + j * dilation[1]
                 for i in range(kh) for j in range(kw))
    nob, orem = divmod(o, _OB)
    full, rest = divmod(wo, _WV * _LANES[dt.char])
    fn = _kernel("forward", (dt.char, taps, _OB, _WV, full, rest, orem, bias is not None))
    # weights as (blocks of ob output channels, C, taps, ob), zeros past O: a block's
    # broadcasts are contiguous
    wp = np.zeros((nob + (orem > 0), _OB, c, kh * kw), dt)
    wp.reshape(-1, c, kh * kw)[:o] = weights.reshape(o, c, kh * kw)
    wp = np.ascontiguousarray(wp.transpose(0, 2, 3, 1))
    b = np.ascontiguousarray(bias, dt) if bias is not None else np.zeros(1, dt)
    args = (src.ctypes.data, wp.ctypes.data, b.ctypes.data, out.ctypes.data)
    geo = (ho, hs * ws, ws, src.strides[0] // item, c, nob,
           out.strides[0] // item, out.strides[1] // item, out.strides[2] // item)
    rows = n * ho
    nt = _threads_for(rows * wo * o * c * len(taps), rows)
    parts = min(rows, _PARTS * nt) if nt > 1 else 1
    bounds = [rows * k // parts for k in range(parts + 1)]
    _run(lambda i, _: fn(*args, bounds[i], bounds[i + 1], *geo), parts, nt)
    return out


def weight_grad(gy, src, run, kernel, dilation, ws, bias=False):
    """(dL/dweights (O, C, kh, kw), dL/dbias (O,) or None) of a stride-1 convolution:
    the sums over grid positions p < run of gy[o, p] · src[c, p + i·dh·ws + j·dw] and
    (with `bias`) of gy[o, p], for dL/dy `gy` (O, >= run) laid out on the input's grid
    (zero at positions that are no output) and the input's grid buffer `src` (C, ...);
    float32 or float64 (`usable`). The positions are split into parts that the
    threads take in turn, each thread summing into its own buffer."""
    o, c = gy.shape[0], src.shape[0]
    kh, kw = kernel
    dt, item = gy.dtype, gy.itemsize
    if run == 0:
        return np.zeros((o, c, kh, kw), dt), np.zeros(o, dt) if bias else None
    if src.dtype != dt or gy.strides[1] != item or src.strides[1] != item:
        raise ValueError("the direct convolution needs one dtype and unit-stride rows")
    lanes = _LANES[dt.char]
    rows = [tuple(i * dilation[0] * ws + j * dilation[1] for j in range(kw))
            for i in range(kh)]
    groups = tuple(r[k:k + _TAPS_W] for r in rows for k in range(0, kw, _TAPS_W))
    nob, orem = divmod(o, _OB_W)
    fn = _kernel("weights", (dt.char, groups, _OB_W, _CHUNK_W, orem, bool(bias)))
    nt = _threads_for(run * o * c * kh * kw, run // _CHUNK_W)
    parts = _PARTS * nt if nt > 1 else 1
    size = o * c * kh * kw * lanes
    outs = np.zeros((nt, size + o * lanes), dt)  # per thread: weight sums, bias sums
    slots = [(outs[k].ctypes.data, outs[k, size:].ctypes.data) for k in range(nt)]
    operands = (gy.ctypes.data, src.ctypes.data)
    geo = (gy.strides[0] // item, src.strides[0] // item, c, nob)
    bounds = [run * k // parts // lanes * lanes for k in range(parts)] + [run]

    def work(i, slot):
        fn(*operands, *slots[slot], bounds[i], bounds[i + 1], *geo)

    _run(work, parts, nt)
    total = outs.sum(axis=0)
    gw = total[:size].reshape(o, c, kh * kw, lanes).sum(axis=-1).reshape(o, c, kh, kw)
    return gw, total[size:].reshape(o, lanes).sum(axis=-1) if bias else None

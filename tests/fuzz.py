"""A seeded fuzzer for onnxfcn: mutated, truncated and hostile models through the API and the CLI.

Each case takes one of the project's own models, applies one to three seeded mutations (at the
protobuf level or the byte level), writes it to a fresh folder and runs inspect, convert (with its
self-check), save and sometimes verify on it, or the CLI. A case passes when:

- only :class:`onnxfcn.OnnxFcnError` was raised (the CLI: exit 0-3, never "unexpected");
- it finished within ``CASE_SECONDS``;
- the input file is byte-for-byte unchanged;
- nothing is left in the folder but the input and, on success, the outputs asked for.

The worker runs in a subprocess whose address space is capped (``MEMORY_LIMIT``), so an attempt
to allocate far beyond memory shows up as an error instead of taking the machine down.

    python tests/fuzz.py --cases 5000 --seed 0      # prints a summary table; exit 1 on any failure
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASE_SECONDS = 60
MEMORY_LIMIT = 6 * 2**30


def base_models() -> dict[str, bytes]:
    """The project's own models: the shipped digits CNN and three head patterns built in the tests."""
    sys.path.insert(0, str(HERE))
    from builders import flatten_gemm, gap_softmax
    from patterns import nhwc_keras

    return {
        "digits": (ROOT / "models" / "digits_cnn.onnx").read_bytes(),
        "flatten_gemm": flatten_gemm().SerializeToString(),
        "gap_softmax_padded": gap_softmax(padded=True).SerializeToString(),
        "nhwc_keras": nhwc_keras().SerializeToString(),
    }


# ---- mutations ------------------------------------------------------------------------------------
def _pick(rng: random.Random, seq: list[Any]) -> Any:
    return seq[rng.randrange(len(seq))] if seq else None


def m_attr_type(m: Any, rng: random.Random) -> str:
    from onnx import AttributeProto

    nodes = [n for n in m.graph.node if n.attribute]
    node = _pick(rng, nodes)
    if node is None:
        return "attr_type: none"
    a = _pick(rng, list(node.attribute))
    kind = rng.choice(["float", "int", "ints", "string", "clear"])
    for f in ("f", "i", "s", "ints", "floats"):
        a.ClearField(f)
    if kind == "float":
        a.type, a.f = AttributeProto.FLOAT, rng.uniform(-3, 3)
    elif kind == "int":
        a.type, a.i = AttributeProto.INT, rng.choice([0, -1, 7, 2**40])
    elif kind == "ints":
        a.type = AttributeProto.INTS
        a.ints.extend(rng.choice([[], [0], [-1, -1], [3, 3, 3], [100000, 1]]))
    elif kind == "string":
        a.type, a.s = AttributeProto.STRING, b"SAME_UPPER" if rng.random() < 0.5 else b"\xff\xfe"
    else:
        a.type = AttributeProto.UNDEFINED
    return f"attr_type: {node.op_type}.{a.name} -> {kind}"


def m_attr_value(m: Any, rng: random.Random) -> str:
    from onnx import AttributeProto

    cands = [(n, a) for n in m.graph.node for a in n.attribute if a.type in (AttributeProto.INT, AttributeProto.INTS,
                                                                             AttributeProto.FLOAT)]
    if not cands:
        return "attr_value: none"
    node, a = _pick(rng, cands)
    if a.type == AttributeProto.INT:
        a.i = rng.choice([-2, -1, 0, 1, 2, 3, 5, 1000000])
    elif a.type == AttributeProto.FLOAT:
        a.f = rng.choice([0.0, -1.0, 1e30, float("nan")])
    else:
        del a.ints[:]
        a.ints.extend(rng.choice([[0, 0], [-1, 2], [1], [50, 50], [2, 2, 2, 2, 2, 2], [1, 1, 1, 1]]))
    return f"attr_value: {node.op_type}.{a.name}"


def m_drop_input(m: Any, rng: random.Random) -> str:
    node = _pick(rng, [n for n in m.graph.node if n.input])
    if node is None:
        return "drop_input: none"
    del node.input[rng.randrange(len(node.input))]
    return f"drop_input: {node.op_type}"


def m_drop_node(m: Any, rng: random.Random) -> str:
    if not m.graph.node:
        return "drop_node: none"
    k = rng.randrange(len(m.graph.node))
    op = m.graph.node[k].op_type
    del m.graph.node[k]
    return f"drop_node: {op}"


def m_rename(m: Any, rng: random.Random) -> str:
    node = _pick(rng, [n for n in m.graph.node if n.input])
    if node is None:
        return "rename: none"
    k = rng.randrange(len(node.input))
    node.input[k] = rng.choice(["ghost", "", node.output[0] if node.output else "x"])
    return f"rename: {node.op_type} input {k}"


def m_op_type(m: Any, rng: random.Random) -> str:
    node = _pick(rng, list(m.graph.node))
    if node is None:
        return "op_type: none"
    old = node.op_type
    node.op_type = rng.choice(["Gemm", "MatMul", "Conv", "Flatten", "Reshape", "Relu", "NoSuchOp", "Softmax",
                               "GlobalAveragePool", "Transpose", "Einsum", "Loop", "If"])
    if rng.random() < 0.2:
        node.domain = rng.choice(["com.microsoft", "ai.onnx.ml", "custom"])
    return f"op_type: {old} -> {node.op_type}"


def m_dims(m: Any, rng: random.Random) -> str:
    t = _pick(rng, list(m.graph.initializer))
    if t is None:
        return "dims: none"
    del t.dims[:]
    t.dims.extend(rng.choice([[1], [0], [2, 3], [-1], [10**9, 10**9], [5, 5, 5, 5, 5]]))
    return f"dims: {t.name}"


def m_dtype(m: Any, rng: random.Random) -> str:
    t = _pick(rng, list(m.graph.initializer))
    if t is None:
        return "dtype: none"
    t.data_type = rng.choice([0, 2, 7, 10, 16, 99, 1000])
    return f"dtype: {t.name} -> {t.data_type}"


def m_raw_cut(m: Any, rng: random.Random) -> str:
    t = _pick(rng, [t for t in m.graph.initializer if t.raw_data])
    if t is None:
        return "raw_cut: none"
    t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    return f"raw_cut: {t.name}"


def m_input_dims(m: Any, rng: random.Random) -> str:
    inits = {t.name for t in m.graph.initializer}
    vi = _pick(rng, [i for i in m.graph.input if i.name not in inits])
    if vi is None:
        return "input_dims: none"
    dims = vi.type.tensor_type.shape.dim
    choice = rng.choice(["huge", "zero", "negative", "symbolic", "rank", "batch"])
    if choice == "rank" or not dims:
        vi.type.tensor_type.shape.dim.add().dim_value = 3
    else:
        d = dims[rng.randrange(len(dims))]
        if choice == "huge":
            d.dim_value = 100000
        elif choice == "zero":
            d.dim_value = 0
        elif choice == "negative":
            d.dim_value = -5
        elif choice == "batch":
            dims[0].dim_value = 100000
        else:
            d.dim_param = "free"
    return f"input_dims: {choice}"


def m_opset(m: Any, rng: random.Random) -> str:
    if m.opset_import:
        m.opset_import[0].version = rng.choice([1, 6, 7, 99, 0])
    return "opset"


def m_outputs(m: Any, rng: random.Random) -> str:
    choice = rng.choice(["drop", "dup", "bogus"])
    if choice == "drop" and m.graph.output:
        del m.graph.output[0]
    elif choice == "dup" and m.graph.output:
        m.graph.output.append(m.graph.output[0])
    else:
        from onnx import helper

        m.graph.output.append(helper.make_tensor_value_info("ghost_out", 1, None))
    return f"outputs: {choice}"


def m_external(m: Any, rng: random.Random) -> str:
    from onnx import TensorProto

    t = _pick(rng, list(m.graph.initializer))
    if t is None:
        return "external: none"
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    loc = rng.choice(["../../etc/passwd", "/etc/hostname", "missing.bin", "", "model.onnx"])
    t.external_data.add(key="location", value=loc)
    if rng.random() < 0.5:
        t.external_data.add(key="offset", value=rng.choice(["-1", "999999999", "x"]))
    t.ClearField("raw_data")
    return f"external: {loc}"


def m_ir(m: Any, rng: random.Random) -> str:
    m.ir_version = rng.choice([0, 1, 3, 99])
    return f"ir_version {m.ir_version}"


def m_metadata(m: Any, rng: random.Random) -> str:
    m.metadata_props.add(key=rng.choice(["onnxfcn.mode", "onnxfcn.window"]), value=rng.choice(["window", "x", "8,8"]))
    return "metadata"


PROTO_MUTATIONS = [m_attr_type, m_attr_value, m_drop_input, m_drop_node, m_rename, m_op_type, m_dims, m_dtype,
                   m_raw_cut, m_input_dims, m_opset, m_outputs, m_external, m_ir, m_metadata]


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """One to three mutations; 30 % of cases at the byte level."""
    if rng.random() < 0.3:
        kind = rng.choice(["truncate", "flip", "insert"])
        b = bytearray(data)
        if kind == "truncate":
            b = b[: rng.randrange(len(b))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 16)):
                k = rng.randrange(len(b))
                b[k] = rng.randrange(256)
        else:
            k = rng.randrange(len(b))
            b[k:k] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        return bytes(b), [f"bytes: {kind}"]
    import onnx

    m = onnx.ModelProto()
    m.ParseFromString(data)
    done = [rng.choice(PROTO_MUTATIONS)(m, rng) for _ in range(rng.randint(1, 3))]
    return m.SerializeToString(), done


# ---- one case -------------------------------------------------------------------------------------
class _Timeout(BaseException):
    """Not an Exception: the library's own handlers around onnxruntime must not swallow it.
    The alarm fires between Python bytecodes, so a long onnxruntime call overruns the limit and is
    reported as a hang when it returns."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def run_case(data: bytes, rng: random.Random, folder: Path, via_cli: bool) -> dict[str, Any]:
    import onnxfcn
    from onnxfcn.io import save_model

    src = folder / "model.onnx"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    out = folder / "out.onnx"
    result: dict[str, Any] = {"outcome": "ok", "error": ""}
    expected = {"model.onnx"}
    signal.alarm(CASE_SECONDS)
    t0 = time.perf_counter()
    try:
        if via_cli:
            from typer.testing import CliRunner

            from onnxfcn.cli import app

            args = rng.choice([["convert", str(src), "-o", str(out), "-q"], ["inspect", str(src)],
                               ["convert", str(src), "-o", str(out), "--json", str(folder / "r.json"), "-q"],
                               ["inspect", str(src), "--json", "--at", "40x40"]])
            res = CliRunner().invoke(app, args)
            result["exit"] = res.exit_code
            if res.exit_code not in (0, 1, 2, 3) or "unexpected" in res.output:
                result["outcome"] = "bad exit"
                result["error"] = res.output.strip()[-300:]
            if res.exit_code == 0 and args[0] == "convert":
                expected |= {p.name for p in folder.iterdir() if p.name.startswith("out.onnx")}
                expected |= {"r.json"} if "--json" in args else set()
        else:
            onnxfcn.inspect(src)
            converted, _ = onnxfcn.convert(src)
            written = save_model(converted, out)
            expected |= {p.name for p in written}
            if rng.random() < 0.15:
                onnxfcn.verify(src, out, positions=2, batch=1)
    except onnxfcn.OnnxFcnError as exc:
        result["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    except _Timeout:
        result["outcome"] = "hang"
    except BaseException as exc:  # the finding: anything else
        result["outcome"] = "other exception"
        result["error"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        result["traceback"] = traceback.format_exc(limit=-3)[-800:]
    finally:
        signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if not src.exists() or hashlib.sha256(src.read_bytes()).hexdigest() != digest:
        result["outcome"] = "input changed"
    left = sorted(p.name for p in folder.iterdir() if p.name not in expected)
    if left and result["outcome"] == "ok":
        result["outcome"] = "files left"
        result["error"] = ", ".join(left)
    return result


def _peak_rss_mb() -> int:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's high-water
    mark across fork and exec, so a worker started by a large pytest process would report its size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def worker(cases: int, seed: int, cli_every: int) -> None:
    """Runs in the capped subprocess; prints one JSON line per case."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGALRM, _alarm)
    import logging

    logging.disable(logging.CRITICAL)
    bases = base_models()
    for k in range(cases):
        print(json.dumps(one_case(bases, seed, k, cli_every)), flush=True)


def one_case(bases: dict[str, bytes], seed: int, k: int, cli_every: int) -> dict[str, Any]:
    """Case ``k`` of the run seeded ``seed``: the same mutations, whatever ran before it."""
    signal.signal(signal.SIGALRM, _alarm)  # run_case's time limit raises, never kills the process
    names = sorted(bases)
    rng = random.Random(seed * 1_000_003 + k)
    name = names[k % len(names)]
    data, mutations = mutate(bases[name], rng)
    with tempfile.TemporaryDirectory(prefix="onnxfcn-fuzz-") as tmp:
        res = run_case(data, rng, Path(tmp), via_cli=cli_every > 0 and k % cli_every == 0)
    res.update({"case": k, "base": name, "mutations": mutations, "max_rss_mb": _peak_rss_mb()})
    return res


def fuzz(cases: int, seed: int = 0, cli_every: int = 5) -> list[dict[str, Any]]:
    """Run ``cases`` cases in a capped subprocess; returns one record per case."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--cases", str(cases),
                           "--seed", str(seed), "--cli-every", str(cli_every)],
                          capture_output=True, text=True, env=env, timeout=cases * CASE_SECONDS + 600)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or len(records) != cases:
        records.append({"case": len(records), "outcome": "worker died", "error": proc.stderr[-1500:],
                        "returncode": proc.returncode})
    return records


def summarize(records: list[dict[str, Any]]) -> str:
    from collections import Counter

    outcomes = Counter(r["outcome"] for r in records)
    errors = Counter(r["error"].split(":")[0] for r in records if r["outcome"] == "ok" and r.get("error"))
    lines = [f"{'cases':<24}{len(records)}"]
    for key in ("ok", "other exception", "bad exit", "hang", "input changed", "files left", "worker died"):
        lines.append(f"{key:<24}{outcomes.get(key, 0)}")
    lines.append(f"{'converted or inspected':<24}{sum(1 for r in records if r['outcome'] == 'ok' and not r.get('error'))}")
    lines.append(f"{'refused (OnnxFcnError)':<24}{sum(errors.values())}  " +
                 ", ".join(f"{k} {v}" for k, v in errors.most_common()))
    lines.append(f"{'slowest case':<24}{max((r.get('seconds', 0) for r in records), default=0):.1f} s")
    lines.append(f"{'peak RSS':<24}{max((r.get('max_rss_mb', 0) for r in records), default=0)} MB "
                 f"(address space capped at {MEMORY_LIMIT // 2**30} GiB)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="Fuzz onnxfcn with mutated models.")
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cli-every", type=int, default=5, help="every Nth case goes through the CLI")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write every case's record here")
    args = ap.parse_args()
    if args.worker:
        worker(args.cases, args.seed, args.cli_every)
        return
    records = fuzz(args.cases, args.seed, args.cli_every)
    print(summarize(records))
    bad = [r for r in records if r["outcome"] != "ok"]
    for r in bad[:20]:
        print(f"  case {r['case']} {r.get('base')} {r.get('mutations')}: {r['outcome']}: {r.get('error', '')[:200]}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

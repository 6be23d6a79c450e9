"""The CodeRepair test harness: a trusted program that runs *inside* a sandbox call.

Pure standard library, no project imports: the env sends this file's source as the program of
one stateless ``Sandbox.run`` call (see :func:`agentrl.envs.coderepair.harness_program`), the
candidate solution as the file ``solution.py``, and a JSON request on stdin::

    {"nonce": hex | null, "task_id", "prompt", "test", "entry_point",
     "mode": "hidden" | "visible", "visible": [statement indices of check()], "call_timeout_s"}

Two processes, so that the candidate can never touch the code that judges it:

- the **judge** (this process) makes itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``: no
  ptrace, no ``/proc/<pid>/mem``, no ``/proc/<pid>/fd`` for same-uid processes without
  CAP_SYS_PTRACE), then reads the whole request from stdin *before anything untrusted
  exists*, executes the trusted problem prompt (helpers such as ``poly``/``encode_cyclic``)
  and the trusted HumanEval test module, and calls ``check(candidate)`` where ``candidate`` is
  a proxy;
- the **candidate** process (``python -I -S -c <this source> child ...``, own session, stdin
  /dev/null, stdout/stderr to a capture file or /dev/null) imports ``solution.py`` and answers
  calls over a pipe pair. Arguments and return values cross the pipe in a tagged JSON codec
  that only builds exact builtin types (None, bool, int, float, str, bytes, complex, list,
  tuple, dict, set, frozenset): an object with a rigged ``__eq__`` cannot be returned, and
  everything the judge compares is its own plain value.

In ``hidden`` mode, only after ``check`` returned without raising and the candidate's process
group is killed, the judge prints one line ``AGENTRL-HARNESS <json>`` holding ``"passed":
true`` and the call's ``nonce``. The host accepts a pass only when that nonce matches: it is
32 fresh random bytes per call that the candidate can never read (the judge drained them from
the stdin pipe before the candidate existed and is non-dumpable), so a forged result line
cannot carry it. Printing "PASSED", exiting 0 early, raising SystemExit at import,
monkeypatching, rigged ``__eq__``, editing files or killing the judge all end without the
nonce: reward 0. If ``prctl`` is unavailable the judge says so and never echoes the nonce
(fail closed).

``visible`` mode runs only the selected top-level statements of ``check`` (the visible
tests, plus the plain set-up statements before them) and reports each test's outcome with
what the candidate returned, and the tail of the candidate's output. Visible results are
feedback only; they never carry the nonce.
"""

import json
import os
import select
import signal
import sys
import time

# Start-up time matters (one harness per tool call): ``ast``, ``traceback`` and ``ctypes`` are
# imported only where needed, and the candidate is started with fork/exec, not subprocess.

MARKER = "AGENTRL-HARNESS "
MAX_LINE_BYTES = 64 << 20
MAX_DEPTH = 200
OUTPUT_TAIL_CHARS = 2000

# --------------------------------------------------------------------------- value codec
# JSON with tags for the types JSON cannot tell apart. Floats travel as JSON numbers
# (Python's json writes/reads NaN and Infinity); ints keep their type because json keeps
# 1 and 1.0 apart. Every dict is tagged so a plain JSON object is never ambiguous.


def encode(value: object, depth: int = 0) -> object:
    """A JSON-able tree for an exact builtin value; raises TypeError for anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(value)
    if value is None or t is bool or t is int or t is float or t is str:
        return value
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is set:
        return {"s": [encode(v, depth + 1) for v in value]}
    if t is frozenset:
        return {"f": [encode(v, depth + 1) for v in value]}
    if t is complex:
        return {"c": [value.real, value.imag]}
    if t is bytes:
        return {"b": value.hex()}
    raise TypeError(f"unsupported type {t.__module__}.{t.__qualname__} (only builtin values can be returned)")


def decode(tree: object, depth: int = 0) -> object:
    """The value of an :func:`encode` tree; raises ValueError on anything malformed."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(tree)
    if tree is None or t is bool or t is int or t is float or t is str:
        return tree
    if t is list:
        return [decode(v, depth + 1) for v in tree]
    if t is dict and len(tree) == 1:
        (tag, body), = tree.items()
        if type(body) is list:
            if tag == "t":
                return tuple(decode(v, depth + 1) for v in body)
            if tag == "d":
                return {decode(k, depth + 1): decode(v, depth + 1) for k, v in (_pair(p) for p in body)}
            if tag == "s":
                return {decode(v, depth + 1) for v in body}
            if tag == "f":
                return frozenset(decode(v, depth + 1) for v in body)
            if tag == "c" and len(body) == 2 and all(type(x) in (int, float) for x in body):
                return complex(body[0], body[1])
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
    raise ValueError(f"malformed value {str(tree)[:80]!r}")


def _pair(p: object) -> list:
    if type(p) is not list or len(p) != 2:
        raise ValueError("malformed dict entry")
    return p


def short_repr(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


# --------------------------------------------------------------------------- candidate side


def child_main(argv: list[str]) -> int:
    """Import the candidate and answer calls: one JSON line in, one JSON line out."""
    rfd, wfd, path, entry_point = int(argv[0]), int(argv[1]), argv[2], argv[3]
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    reader = os.fdopen(rfd, "rb")
    writer = os.fdopen(wfd, "wb")

    def send(msg: dict) -> None:
        writer.write(json.dumps(msg).encode() + b"\n")
        writer.flush()

    module = type(sys)("solution")
    module.__file__ = path
    sys.modules["solution"] = module
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - this process is the candidate
        fn = module.__dict__.get(entry_point)
        if not callable(fn):
            msg = f"solution.py does not define a function named {entry_point!r}"
            raise NameError(msg)  # noqa: TRY004 - reported to the model as a load error
    except BaseException:  # noqa: BLE001 - SystemExit at import is a failure to load
        send({"ok": False, "error": _format_exc()})
        return 1
    send({"ok": True})
    for line in reader:
        try:
            request = json.loads(line)
            args = decode(request["args"])
            kwargs = decode(request["kwargs"])
        except Exception:  # noqa: BLE001
            send({"ok": False, "error": "harness protocol error: " + _format_exc()})
            continue
        try:
            result = fn(*args, **kwargs)
        except BaseException:  # noqa: BLE001 - SystemExit in a call is the call's failure
            send({"ok": False, "error": _format_exc()})
            continue
        try:
            send({"ok": True, "value": encode(result)})
        except Exception as e:  # noqa: BLE001
            send({"ok": False, "error": f"the return value could not be checked: {type(e).__name__}: {e}"})
    return 0


def _format_exc() -> str:
    import traceback

    etype, value, tb = sys.exc_info()
    # Drop the harness's own frames: show the candidate's.
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(("<harness", "<string>"))]
    lines = traceback.format_list(frames[-6:]) + traceback.format_exception_only(etype, value)
    return "".join(lines).strip()


# --------------------------------------------------------------------------- judge side


class CandidateError(Exception):
    """The candidate failed a call: it raised, crashed, hung or returned a non-builtin."""


class Candidate:
    """The candidate process, started on first call and again after a crash (visible mode)."""

    def __init__(self, entry_point: str, call_timeout_s: float, capture: bool) -> None:
        self.entry_point = entry_point
        self.call_timeout_s = call_timeout_s
        self.capture_fd = _tmpfile() if capture else None
        self.pid: int | None = None
        self.calls = 0
        self.last_call = ""
        self.load_error = ""

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        argv = [sys.executable, "-I", "-S", "-u", "-c", _HARNESS_SOURCE, "child", "3", "4", "solution.py", self.entry_point]  # noqa: F821
        env = {"PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        pid = os.fork()
        if pid == 0:  # the candidate: new session, stdin /dev/null, only fds 0-4 open
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                out = self.capture_fd if self.capture_fd is not None else null
                # Park the fds above all of them first so no dup2 below clobbers another one.
                park = max(req_r, resp_w, null, out) + 1
                for i, src in enumerate((null, out, req_r, resp_w)):
                    os.dup2(src, park + i)
                for i, low in ((0, 0), (1, 1), (1, 2), (2, 3), (3, 4)):
                    os.dup2(park + i, low)
                os.closerange(5, 1 << 16)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        os.close(req_r)
        os.close(resp_w)
        self.pid, self.req_w, self.resp_r, self.buf = pid, req_w, resp_r, b""
        hello = self._read_line("loading solution.py")
        if not hello.get("ok"):
            self.load_error = str(hello.get("error", "unknown error"))
            self.kill()
            raise CandidateError(f"solution.py failed to load:\n{self.load_error}")

    def _read_line(self, what: str) -> dict:
        deadline = time.monotonic() + self.call_timeout_s
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise CandidateError(f"timed out after {self.call_timeout_s:g} s while {what}")
            ready, _, _ = select.select([self.resp_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.resp_r, 1 << 16)
            if not chunk:
                code = self.kill()
                raise CandidateError(f"the solution process exited (code {code}) while {what}")
            self.buf += chunk
            if len(self.buf) > MAX_LINE_BYTES:
                self.kill()
                raise CandidateError("the solution process sent an oversized reply")
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except Exception:  # noqa: BLE001
            self.kill()
            raise CandidateError("the solution process sent a malformed reply (did it write to the harness pipe?)") from None
        if type(msg) is not dict:
            self.kill()
            raise CandidateError("the solution process sent a malformed reply")
        return msg

    def __call__(self, *args: object, **kwargs: object) -> object:
        if self.load_error:
            raise CandidateError(f"solution.py failed to load:\n{self.load_error}")
        self.calls += 1
        shown = ", ".join([short_repr(a, 120) for a in args] + [f"{k}={short_repr(v, 120)}" for k, v in kwargs.items()])
        self.last_call = f"{self.entry_point}({shown})"
        if self.pid is None:
            self._start()
        line = json.dumps({"args": encode(list(args)), "kwargs": encode(kwargs)}).encode() + b"\n"
        try:
            _write_all(self.req_w, line)
        except OSError:
            code = self.kill()
            raise CandidateError(f"the solution process exited (code {code}) before {self.last_call}") from None
        reply = self._read_line(f"running {self.last_call}")
        if not reply.get("ok"):
            raise CandidateError(f"{self.last_call} raised:\n{reply.get('error', '?')}")
        try:
            return decode(reply.get("value"))
        except Exception as e:  # noqa: BLE001
            self.kill()
            raise CandidateError(f"{self.last_call} returned a malformed value: {e}") from None

    def kill(self) -> int | None:
        """Kill the candidate's whole process group (its session); returns its exit status."""
        pid, self.pid = self.pid, None
        if pid is None:
            return None
        for fd in (self.req_w, self.resp_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def output_tail(self) -> str:
        if self.capture_fd is None:
            return ""
        size = os.lseek(self.capture_fd, 0, os.SEEK_END)
        os.lseek(self.capture_fd, max(0, size - 4 * OUTPUT_TAIL_CHARS), os.SEEK_SET)
        text = os.read(self.capture_fd, 4 * OUTPUT_TAIL_CHARS).decode("utf-8", "replace")
        return text[-OUTPUT_TAIL_CHARS:]


def _tmpfile() -> int:
    """An anonymous file in /tmp for the candidate's output (unlinked at once)."""
    try:
        return os.open("/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        path = f"/tmp/.harness-output-{os.getpid()}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(path)
        return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def make_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): same-uid processes can no longer ptrace this one or open
    its /proc/<pid>/mem, /proc/<pid>/fd/*, /proc/<pid>/environ. Returns success."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE = 4
    except Exception:  # noqa: BLE001 - reported to the host, which then refuses a pass
        return False


def _load_problem(request: dict) -> dict:
    """The trusted namespace: the problem's prompt (helper functions) and its test module."""
    ns: dict = {"__name__": "__problem__"}
    exec(compile(request["prompt"], "<harness:prompt>", "exec"), ns)  # noqa: S102 - trusted HumanEval code
    exec(compile(request["test"], "<harness:test>", "exec"), ns)  # noqa: S102 - trusted HumanEval code
    return ns


def run_hidden(request: dict, nonce: str | None, dumpable_off: bool) -> dict:
    """HumanEval's full check(); on a pass the result echoes this call's nonce."""
    ns = _load_problem(request)
    candidate = Candidate(request["entry_point"], float(request["call_timeout_s"]), capture=False)
    ns[request["entry_point"]] = candidate
    try:
        ns["check"](candidate)
        passed, error = True, ""
    except CandidateError as e:
        passed, error = False, str(e)
    except AssertionError:
        passed, error = False, f"a hidden test failed (last call: {candidate.last_call or 'none'})"
    except BaseException as e:  # noqa: BLE001 - anything else is a failure, never a pass
        passed, error = False, f"{type(e).__name__}: {e}"
    finally:
        candidate.kill()
    result = {"mode": "hidden", "passed": passed, "calls": candidate.calls, "error": error[-2000:], "non_dumpable": dumpable_off}
    if passed and nonce and dumpable_off:
        result["nonce"] = nonce
    return result


def run_visible(request: dict) -> dict:
    """The selected statements of check(), each test reported with what the candidate returned."""
    import ast

    ns = _load_problem(request)
    tree = ast.parse(request["test"])
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    candidate = Candidate(request["entry_point"], float(request["call_timeout_s"]), capture=True)
    ns[request["entry_point"]] = candidate
    ns["candidate"] = candidate
    selected = set(request["visible"])
    tests = []
    last = max(selected) if selected else -1
    for i, stmt in enumerate(check.body[: last + 1]):
        has_assert = any(isinstance(n, ast.Assert) for n in ast.walk(stmt))
        is_test = i in selected and has_assert
        if has_assert and not is_test:
            continue  # a hidden test
        code = compile(ast.Module(body=[stmt], type_ignores=[]), "<harness:visible>", "exec")
        candidate.last_call = ""
        try:
            exec(code, ns)  # noqa: S102 - a statement of the trusted check()
            ok, message = True, ""
        except CandidateError as e:
            ok, message = False, str(e)
        except AssertionError:
            ok, message = False, f"{candidate.last_call} returned {short_repr(_last_value(ns, stmt, candidate))}"
        except Exception as e:  # noqa: BLE001
            ok, message = False, f"{type(e).__name__}: {e}" + (f" (last call: {candidate.last_call})" if candidate.last_call else "")
        if is_test:
            source = ast.get_source_segment(request["test"], stmt) or ast.unparse(stmt)
            tests.append({"source": _strip_message(source), "passed": ok, "message": message[-1500:]})
        elif not ok:
            tests.append({"source": "(test set-up)", "passed": False, "message": message[-1500:]})
    candidate.kill()
    return {"mode": "visible", "tests": tests, "output": candidate.output_tail(), "load_error": candidate.load_error}


def _last_value(ns: dict, stmt: object, candidate: Candidate) -> object:
    """Re-run the assert's first candidate call to show what it returned."""
    import ast

    calls = [n for n in ast.walk(stmt) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("candidate", candidate.entry_point)]
    if not calls:
        return "?"
    expr = compile(ast.Expression(body=calls[0]), "<harness:visible>", "eval")
    try:
        return eval(expr, ns)
    except Exception as e:  # noqa: BLE001
        return f"<{type(e).__name__}: {e}>"


def _strip_message(source: str) -> str:
    """``assert x == y, "This prints if this assert fails 1 (good for debugging!)"`` -> ``assert x == y``."""
    import ast

    try:
        node = ast.parse(source).body[0]
    except SyntaxError:
        return source
    if isinstance(node, ast.Assert) and node.msg is not None:
        return "assert " + (ast.get_source_segment(source, node.test) or ast.unparse(node.test))
    return source


def judge_main() -> int:
    dumpable_off = make_non_dumpable()
    request = json.loads(sys.stdin.buffer.read())  # drained before anything untrusted starts
    nonce = request.pop("nonce", None)
    try:
        if request["mode"] == "hidden":
            result = run_hidden(request, nonce, dumpable_off)
        else:
            result = run_visible(request)
    except BaseException as e:  # noqa: BLE001 - the harness must always answer
        result = {"mode": request.get("mode"), "passed": False, "harness_error": f"{type(e).__name__}: {e}"}
    nonce = None
    sys.stdout.write("\n" + MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        return child_main(sys.argv[2:])
    return judge_main()


if __name__ == "__main__":
    # The host prepends ``_HARNESS_SOURCE = <this file's text>`` so the judge can start the
    # candidate process from the same code (python -c), with no file the candidate could edit.
    sys.exit(main())

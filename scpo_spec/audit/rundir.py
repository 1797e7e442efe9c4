"""The run directory, owned here: its file names, its header, the checked spec rebuilt from the
header once, and the state file bound to the log.  numpy only; nothing in a run is unpickled or
imported.

    RUN/spec.scpo|yaml   the spec, verbatim (its SHA-256 is in the header)
    RUN/audit.jsonl      the hash-chained log (scpo_spec.audit.log), typed records (.records)
    RUN/state.npz        θ, the optimizer's moments, the objective's generator and ℓ after the
                         last record, with that record's head hash and θ's hash: a state file
                         belongs to one point of the log, and every reader checks that it does
    RUN/signature.json   optional Ed25519 signature of the head (scpo train --sign)
    RUN/report.html|md   the certification report
    RUN/verify.json      optional: what `scpo verify RUN` proved about the final policy, chained
                         to the log by the head it was computed at (audit/records.VerifyRecord)
    RUN/run.lock         the one-writer lock of `scpo train` (flock; holds the writer's pid)
    RUN/tensorboard/     TensorBoard event files (scpo_spec/tracking), written from the committed
                         records; not part of the certificate: audit, report and resume never
                         read it, and a missing or damaged one changes nothing

A state file is written *before* the record it belongs to is appended, and carries that record's
line (`pending`): a kill between the two leaves a state one record ahead of the log, and
`--resume` completes the append instead of losing or repeating the step.  An append that fails
(a full disk) puts the previous state back (RUN/state.npz.prev, a second name for it kept during
each commit), so the state and the log stay at the same record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scpo_spec.audit.files import UnreadableFile, open_regular, read_regular
from scpo_spec.audit.log import LOG_LIMIT, LogLine, parse_line, read_lines, sha256_hex
from scpo_spec.audit.records import Header, Record, RecordError, parse_record, theta_sha256
from scpo_spec.errors import ScpoError

LOG_NAME = "audit.jsonl"
STATE_NAME = "state.npz"
STATE_FORMAT = "scpo-state/1"
SIGNATURE_NAME = "signature.json"
VERIFY_NAME = "verify.json"
VERIFY_MAX_BYTES = 4 << 20  # a verify record is a few kB per constraint; larger is not one
TORN_NAME = "audit.torn"
LOCK_NAME = "run.lock"
TENSORBOARD_NAME = "tensorboard"
LEGACY_CHECKPOINT = "checkpoint.pt"
SPEC_STEM = "spec"
STATE_LIMIT = 256 * 2**20  # bytes of state.npz, and of its members decompressed, a reader takes
SMALL_MEMBER = 2**16       # bytes of each of the state file's small byte-array members
NPY_HEADER = 2**16         # bytes of a .npy header, at most (numpy's own reading limit is 10,000)
# The state file's members: (dtype, length), the length in the log's terms: "d" (θ's weights)
# or "k" (metrics), or a number of bytes it may hold at most.  Nothing else is read.
STATE_ARRAYS = {
    "a_theta": ("<f8", "d"), "a_previous": ("<f8", "d"),
    "a_opt_buf": ("<f8", "d"), "a_opt_m": ("<f8", "d"), "a_opt_v": ("<f8", "d"),
    "a_g": ("<f8", "k"), "a_ell": ("<f8", "k"), "a_ell_floor": ("<f8", "k"),
    "a_objective_generator": ("|u1", SMALL_MEMBER),  # a torch generator's state
    "a_generator": ("|u1", SMALL_MEMBER),  # state files before probes were seeded per step
    "meta": ("|u1", SMALL_MEMBER),         # the JSON record of StateFile's scalars
    "pending": ("|u1", LOG_LIMIT),         # a log line (bounded by STATE_LIMIT in all)
}


class RunError(ScpoError):
    """A run directory that cannot be created, resumed or loaded (the message says why)."""


class CodeChanged(RunError):
    """The code a run's spec names is not the code the run fingerprinted (trust refused)."""


@dataclass
class StateFile:
    """What `--resume` needs to continue exactly, and what binds it to the log."""

    head: str                       # the head hash of the log record this state belongs to
    seq: int                        # that record's seq
    theta: str                      # θ's SHA-256 (its float64 bytes)
    step: int
    accepted: int
    loss: float
    optimizer_t: int
    arrays: dict = field(default_factory=dict)   # theta, previous, g, ell, ell_floor, opt_*, …
    pending: bytes | None = None    # the record's line, until the log holds it


class RunDir:
    """Paths and reads of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._undo: str | None = None  # how to take back the last write_state

    # ---- paths ----
    @property
    def log(self) -> Path:
        return self.path / LOG_NAME

    @property
    def state(self) -> Path:
        return self.path / STATE_NAME

    @property
    def signature(self) -> Path:
        return self.path / SIGNATURE_NAME

    @property
    def verify_record(self) -> Path:
        return self.path / VERIFY_NAME

    @property
    def torn(self) -> Path:
        return self.path / TORN_NAME

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_NAME

    def spec_file(self, suffix: str) -> Path:
        return self.path / f"{SPEC_STEM}{suffix or '.scpo'}"

    def spec_files(self) -> list[Path]:
        """The spec copies the run holds (one, written when the run was created)."""
        return sorted(self.path.glob(f"{SPEC_STEM}.*"))

    def report(self, fmt: str) -> Path:
        return self.path / f"report.{fmt}"

    def is_run(self) -> bool:
        return self.log.is_file()

    def is_empty(self) -> bool:
        """No file but (perhaps) a lock left by a writer that died before writing anything."""
        return all(p.name == LOCK_NAME for p in self.path.iterdir())

    # ---- one writer per run ----
    def lock(self) -> None:
        """Take the run's writer lock, or RunError naming the process that holds it.

        An flock on an open descriptor: the kernel releases it when the holder exits however it
        exits (a SIGKILL included), so a lock left by a dead writer is simply taken over, and
        there is no stale-lock heuristic to get wrong.  The holder's pid is written into the
        file only so that the refusal can name it."""
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunError(f"cannot write in {self.path} ({e.strerror or e}); a run needs a "
                           "writable folder (nothing was written)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunError(f"cannot lock {self.lock_file}: {e.strerror or e}") from None
            who = f"pid {holder}" if holder.isdigit() else "a process that is starting"
            raise RunError(f"{self.path} is being written by another scpo process ({who}); a "
                           "run has one writer at a time: wait for it to end, or stop it and "
                           "then --resume") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds without the pid
        self._lock_fd = fd

    def discard(self, made: bool) -> None:
        """Remove a run that failed before its first records were logged (nothing is left
        half-created); the folder itself too when this run `made` it."""
        for f in [self.log, self.state, self.path / (STATE_NAME + ".tmp"), self._previous,
                  self.torn, *self.path.glob(f"{SPEC_STEM}.*")]:
            try:
                f.unlink(missing_ok=True)
            except OSError:
                pass
        shutil.rmtree(self.tensorboard, ignore_errors=True)
        self.unlock()
        try:
            self.lock_file.unlink(missing_ok=True)
            if made:
                self.path.rmdir()
        except OSError:
            pass

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # ---- the log ----
    def lines(self) -> tuple[list[LogLine], bytes]:
        if not self.is_run():
            raise RunError(f"{self.path} is not a run directory (no {LOG_NAME})")
        try:
            return read_lines(self.log)
        except UnreadableFile as e:
            raise RunError(str(e)) from None
        except OSError as e:
            raise RunError(f"cannot read {self.log}: {e.strerror or e}") from None

    def header(self, lines: list[LogLine] | None = None) -> Header:
        """The header record (of `lines`, the log as read once, when given)."""
        lines = self.lines()[0] if lines is None else lines
        if not lines:
            raise RunError(f"{self.log} is empty")
        if lines[0].problem:
            raise RunError(f"{self.log}: line 1 {lines[0].problem}")
        try:
            rec = parse_record(lines[0].record, 0)
        except RecordError as e:
            raise RunError(f"{self.log} does not start with a readable header ({e})") from None
        if not isinstance(rec, Header):
            raise RunError(f"{self.log} does not start with a header record")
        return rec

    def records(self, lines: list[LogLine] | None = None) -> list[Record]:
        """Every record, typed (RunError naming the first unreadable one)."""
        lines = self.lines()[0] if lines is None else lines
        bad = next((i for i, ln in enumerate(lines) if ln.problem), None)
        if bad is not None:
            raise RunError(f"{self.log}: line {bad + 1} {lines[bad].problem}")
        try:
            return [parse_record(ln.record, i) for i, ln in enumerate(lines)]
        except RecordError as e:
            raise RunError(f"{self.log}: {e}") from None

    def head(self, lines: list[LogLine] | None = None) -> str:
        lines = self.lines()[0] if lines is None else lines
        return sha256_hex(lines[-1].raw) if lines else "0" * 64

    # ---- the spec, rebuilt once from the header ----
    def stored_text(self, header: Header | None = None):
        """The header's spec text read into its document (language.load.ParsedText), the one
        parse every use of the stored spec shares (audit/loaded.py keeps it); None when the
        header holds no text."""
        from scpo_spec.language.load import parse_text
        spec = (header or self.header()).spec
        if not isinstance(spec.get("text"), str):
            return None
        return parse_text(spec["text"], path=str(spec.get("path") or "<spec>"),
                          syntax=spec.get("syntax"))

    def checked_spec(self, header: Header | None = None, trust_code: bool = False,
                     parsed=None):
        """The spec stored in the header, checked as `scpo check` would (its data files relative
        to where the spec was), or RunError.  A spec that names code (a python plant, a
        gymnasium `module:Env`, a TorchScript backup or policy) is checked without importing
        or opening any of it; with `trust_code`, its files must first be exactly the ones the
        header fingerprinted, and then the checks that run the code run too (those of the
        language: a gymnasium module is imported).  A python plant or a TorchScript file is
        loaded by whoever uses it, under `expecting` (these bytes or none), and is checked
        with `ran_as_recorded` after it loaded.  `parsed`: the text's `stored_text`, when the
        caller holds it (else it is parsed here)."""
        from scpo_spec.usercode.loader import CodeMismatch
        from scpo_spec.plan.code import expecting, names_code, ran_as_recorded, unchanged
        header = header or self.header()
        spec = header.spec
        text, path = spec.get("text"), spec.get("path")
        if not isinstance(text, str) or not isinstance(path, str):
            raise RunError(f"{self.log}: the header holds no spec text")
        if sha256_hex(text.encode()) != spec.get("sha256"):
            raise RunError(f"{self.log}: the spec text in the header does not match its SHA-256")
        origin = Path(spec.get("resolved") or path)
        parsed = parsed or self.stored_text(header)
        built = parsed.check(run_checks=False)  # builds, runs nothing
        runs_code = built.spec is not None and names_code(built.spec)
        if runs_code and trust_code:
            problems = unchanged(header.code, built.spec, origin.parent)
            if problems:
                raise CodeChanged(f"not trusting the code of {self.path}: {problems[0]}")
        try:  # trusted: only the recorded bytes may run, refused before they would
            with expecting(header.code, built.spec, origin.parent) if runs_code and trust_code \
                    else contextlib.nullcontext():
                result = parsed.check(base_dir=origin.parent, run_code=trust_code or not runs_code)
        except CodeMismatch as err:
            raise CodeChanged(f"not trusting the code of {self.path}: {err}") from None
        if result.spec is None or not result.ok:
            first = next((d.headline() for d in result.diagnostics if d.severity == "error"),
                         "it does not build")
            raise RunError(f"the spec stored in {self.log} fails `scpo check` ({first}); "
                           "refusing to read the run as that spec")
        if runs_code and trust_code:  # and what ran is what was checked (not a cached .pyc)
            problems = ran_as_recorded(header.code, result.spec, origin.parent, every=False)
            if problems:
                raise CodeChanged(f"not trusting the code of {self.path}: {problems[0]}")
        from scpo_spec.audit.warm_start import WarmStart, is_warm_start, resolved
        if is_warm_start(result.spec):  # `policy from`: the family the header recorded
            if header.warm_start is None:
                raise RunError(f"{self.log}: the spec says `policy from`, but the header does "
                               "not record the run it started from")
            return resolved(result.spec, WarmStart.from_record(header.warm_start,
                                                               str(self.log))), origin.parent
        return result.spec, origin.parent

    def declared(self, header: Header | None = None, parsed=None) -> dict | None:
        """What the header's spec text says of the fields the header records beside it (its
        name, metrics, settings, seeds, horizon, scenario count, uncertainty with the digest of its
        draws), as the header records them:
        parsed and built, and passed through `scpo check`'s size checks before anything is
        sized (nothing read or run); None when the text does not build, RunError when it fails
        those checks.  `parsed`: as for `checked_spec`."""
        from scpo_spec.language.check import size_errors
        from scpo_spec.plan.scenarios import scenario_count, uncertainty_record
        from scpo_spec.plan.settings import Settings, declared_seeds
        header = header or self.header()
        spec = header.spec
        if not isinstance(spec.get("text"), str):
            return None
        built = (parsed or self.stored_text(header)).check(run_checks=False).spec
        if built is None or built.train is None or built.scenarios is None:
            return None
        too_large = size_errors(built)
        if too_large:
            raise RunError(f"the spec stored in {self.log} fails `scpo check` "
                           f"({too_large[0].headline()}); nothing of it is sized")
        try:
            scenarios = scenario_count(built)
        except (ValueError, TypeError, OSError):  # not computable from the text alone
            scenarios = None
        try:  # the draws too, made again from the text (numpy only)
            uncertainty = uncertainty_record(built)
        except (ValueError, TypeError, OverflowError) as err:
            uncertainty = f"its draws cannot be made ({err})"
        return {"name": built.name.name if built.name else None,
                "metrics": built.declared_metrics(), "settings": vars(Settings.of(built)),
                "seeds": declared_seeds(built), "horizon": int(built.scenarios.horizon),
                "scenarios": scenarios, "uncertainty": uncertainty}

    # ---- the state file ----
    def write_state(self, state: StateFile) -> None:
        """Atomically replace the state file (written, fsync'ed, renamed); the one it replaces
        stays hard-linked as state.npz.prev until `keep_state` or `undo_state`."""
        meta = {"format": STATE_FORMAT, "head": state.head, "seq": state.seq,
                "theta": state.theta, "step": state.step, "accepted": state.accepted,
                "loss": state.loss, "optimizer_t": state.optimizer_t}
        arrays = {f"a_{k}": np.ascontiguousarray(v) for k, v in state.arrays.items()}
        unknown = sorted(set(arrays) - set(STATE_ARRAYS))
        if unknown:  # a reader would refuse the file: say so where it is written
            raise ValueError(f"state arrays {unknown} are not in STATE_ARRAYS, the members "
                             "readers accept")
        arrays["meta"] = np.frombuffer(json.dumps(meta, allow_nan=True).encode(), dtype=np.uint8)
        if state.pending is not None:
            arrays["pending"] = np.frombuffer(state.pending, dtype=np.uint8)
        tmp = self.path / (STATE_NAME + ".tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            self._previous.unlink(missing_ok=True)
            self._undo = "remove"
            if self.state.exists():
                try:
                    os.link(self.state, self._previous)  # a name, not a copy: no space needed
                    self._undo = "restore"
                except OSError:  # no hard links here: an undo leaves the state one ahead
                    self._undo = None
            os.replace(tmp, self.state)
        except OSError:  # a full disk: the previous state file stays, whole
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise

    @property
    def _previous(self) -> Path:
        return self.path / (STATE_NAME + ".prev")

    def keep_state(self) -> None:
        """The record of the state just written is in the log: the previous state can go."""
        self._undo = None
        self._previous.unlink(missing_ok=True)

    def undo_state(self) -> None:
        """The record of the state just written could not be appended (a full disk): put the
        previous state file back, so the state and the log stay at the same record and the run
        audits clean.  Renames need no space; the first state file of a run just goes."""
        try:
            if self._undo == "restore":
                os.replace(self._previous, self.state)
            elif self._undo == "remove":
                self.state.unlink(missing_ok=True)
        except OSError:
            pass  # the state stays one record ahead (`pending`), which --resume completes
        self._undo = None

    def read_state(self, dimensions: dict | None = None) -> StateFile:
        """The state file, read without pickle and checked against its own θ hash.  Its members
        are read by name, only the known ones (STATE_ARRAYS), each after its declared size and
        type (the zip's file_size, the .npy header) are checked against the `dimensions` the log
        states (d weights, k metrics; its header's when not given), so that no member is
        decompressed beyond what the log says it holds."""
        if not self.state.exists() and not self.state.is_symlink():
            if (self.path / LEGACY_CHECKPOINT).exists():
                raise RunError(f"{self.path / LEGACY_CHECKPOINT} was written by an older "
                               "scpo-spec as a pickle, which is never loaded (unpickling runs "
                               "code); audit its log with `scpo audit`, or train again")
            raise RunError(f"{self.path} has no {STATE_NAME}")
        if dimensions is None:
            dimensions = _dimensions(self.lines()[0])
        try:
            with os.fdopen(open_regular(self.state, STATE_LIMIT), "rb") as f:
                _check_directory(f)
                with zipfile.ZipFile(f) as z:
                    data = _state_members(z, dimensions)
            meta, problem = parse_line(bytes(data.pop("meta")))
            if problem:
                raise ValueError(f"its meta record {problem}")
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {STATE_FORMAT}")
            pending = data.pop("pending", None)
            state = StateFile(head=str(meta["head"]), seq=int(meta["seq"]),
                              theta=str(meta["theta"]), step=int(meta["step"]),
                              accepted=int(meta["accepted"]), loss=float(meta["loss"]),
                              optimizer_t=int(meta["optimizer_t"]),
                              arrays={k[2:]: v for k, v in data.items() if k.startswith("a_")},
                              pending=bytes(pending) if pending is not None else None)
        except UnreadableFile as e:
            raise RunError(str(e)) from None
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
                UnicodeDecodeError) as e:
            raise RunError(f"{self.state} cannot be read ({type(e).__name__}: {e}); it is "
                           "damaged or not a state file") from None
        if "theta" not in state.arrays or theta_sha256(state.arrays["theta"]) != state.theta:
            raise RunError(f"{self.state}: θ does not match the hash stored with it")
        return state

    def bound_state(self, lines: list[LogLine] | None = None) -> tuple[StateFile, bool]:
        """The state file and whether its record is still pending, after checking that it
        belongs to this log: either to the last record, or to the very next one (a kill between
        the state write and the append).  RunError names the file and the record otherwise."""
        if lines is None:
            lines, _ = self.lines()
        state = self.read_state(_dimensions(lines))
        head = sha256_hex(lines[-1].raw) if lines else "0" * 64
        if state.head == head and state.seq == len(lines) - 1:
            return state, False
        if (state.pending is not None and sha256_hex(state.pending) == state.head
                and state.seq == len(lines)):
            record, problem = parse_line(state.pending)
            prev = None if problem else record.get("prev")
            if prev == head:
                try:
                    parse_record(record, len(lines))
                except RecordError as e:
                    raise RunError(f"{self.state} holds a record for the log that cannot be read "
                                   f"({e}); it is not one `scpo train` wrote") from None
                return state, True
        known = {sha256_hex(ln.raw): i for i, ln in enumerate(lines)}
        where = (f"record {known[state.head]}, not the last one ({len(lines) - 1})"
                 if state.head in known else "no record of this log")
        raise RunError(f"{self.state} belongs to {where} of {self.log} (its head "
                       f"{state.head[:16]}…, the log's {head[:16]}…); the state and the log "
                       "do not go together")

    def final_theta(self, expected_hash: str | None,
                    bound: tuple[StateFile, bool] | None = None) -> np.ndarray:
        """θ of the state file (`bound`: its `bound_state`, when the caller holds it), which
        must be the log's last accepted policy `expected_hash`."""
        state, _ = bound or self.bound_state()
        if expected_hash is None or state.theta != expected_hash:
            raise RunError(f"{self.state} holds a policy ({state.theta[:16]}…) that is not the "
                           f"last one the log accepted ({str(expected_hash)[:16]}…)")
        return np.asarray(state.arrays["theta"], dtype=np.float64)


    # ---- the verify record (RUN/verify.json) ----
    def write_verify(self, record: dict) -> None:
        """Write the verify record whole or not at all (a temporary file, fsync'ed, renamed over
        whatever was there — a link planted in its place is replaced, never followed); OSError
        when the folder cannot be written."""
        tmp = self.path / f".{VERIFY_NAME}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.verify_record)
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass

    def drop_verify(self) -> bool:
        """Remove the verify record once the log has moved past the head it is of (a resume):
        whether one was removed.  One that cannot be removed stays, and the audit says it is of
        an earlier record."""
        try:
            self.verify_record.unlink()
            return True
        except OSError:
            return False

    def read_verify(self) -> bytes | None:
        """The verify record's bytes (None: there is none), or RunError when something else
        is in its place: a link (the record is written in place, never linked, so even a link
        to a genuine one is refused), or what `files.read_regular` refuses (a FIFO or device, a
        file over VERIFY_MAX_BYTES)."""
        path = self.verify_record
        try:
            if path.is_symlink():
                raise UnreadableFile(f"{path} is not a regular file (a symbolic link); nothing "
                                     "was read from it")
            return read_regular(path, VERIFY_MAX_BYTES)
        except FileNotFoundError:
            return None
        except UnreadableFile as e:
            raise RunError(str(e)) from None
        except OSError as e:
            raise RunError(f"{path} cannot be read: {e.strerror or e}") from None


def built_spec(text: str, path: str, syntax: str | None):
    """A spec text a header holds (a warm start's source, audit/warm_start.py), parsed and built
    — nothing read, nothing run — or None when it does not build."""
    from scpo_spec.language.load import parse_text
    return parse_text(text, path=path, syntax=syntax).check(run_checks=False).spec


def _dimensions(lines: list[LogLine]) -> dict:
    """The header's dimensions (what a state file is checked against), or RunError."""
    if not lines or lines[0].record.get("type") != "header":
        raise RunError("the log does not start with a header, so its state file cannot be "
                       "checked against it")
    dims = lines[0].record.get("dimensions")
    return dims if isinstance(dims, dict) else {}


def _check_directory(f) -> None:
    """Refuse a zip whose central directory (which opening it parses whole, one object per
    entry) is larger than a state file's: read from the end record, as zipfile reads it."""
    end = zipfile._EndRecData(f)  # zipfile's own reader of the end record (None: not a zip)
    if end is None:
        raise zipfile.BadZipFile("it is not a zip archive")
    entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    if entries > len(STATE_ARRAYS) or size > len(STATE_ARRAYS) * 1024:
        raise ValueError(f"it lists {entries:,} members in {size:,} bytes; a state file has at "
                         f"most {len(STATE_ARRAYS)}")
    f.seek(0)


def _state_members(z: zipfile.ZipFile, dimensions: dict) -> dict[str, np.ndarray]:
    """The known members of an open state file, each read only after its declared size (the
    zip's file_size) and its .npy header (dtype, 1-D shape) are what `dimensions` allow."""
    from numpy.lib import format as npy
    infos = z.infolist()
    names = [i.filename.removesuffix(".npy") for i in infos]
    unknown = [i.filename for i, n in zip(infos, names) if n not in STATE_ARRAYS]
    if unknown:
        raise ValueError(f"it holds {unknown[0]!r}, which is not a member of a state file")
    if len(set(names)) != len(names):
        raise ValueError("it holds a member twice")
    declared = sum(i.file_size for i in infos)
    if declared > STATE_LIMIT:
        raise ValueError(f"its members would decompress to {declared:,} bytes (at most "
                         f"{STATE_LIMIT:,})")
    out = {}
    for info, name in zip(infos, names):
        dtype, length = STATE_ARRAYS[name]
        stated = dimensions.get(length) if isinstance(length, str) else None
        exact = isinstance(stated, int) and not isinstance(stated, bool) and stated >= 0
        # a byte array, or a header that states no such dimension: at most the limit
        size = stated if exact else length if isinstance(length, int) else \
            STATE_LIMIT // np.dtype(dtype).itemsize
        nbytes = size * np.dtype(dtype).itemsize
        if info.file_size > nbytes + NPY_HEADER:
            raise ValueError(f"{name} declares {info.file_size:,} bytes; the log's dimensions "
                             f"allow {nbytes:,}")
        with z.open(info) as f:
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{name} is a .npy file of version {version}")
            read_header = npy.read_array_header_1_0 if version == (1, 0) else \
                npy.read_array_header_2_0
            shape, _, got = read_header(f)
            if got != np.dtype(dtype) or len(shape) != 1 or \
                    (shape[0] != size if exact else shape[0] > size):
                raise ValueError(f"{name} is {got} {shape}, expected {np.dtype(dtype)} of "
                                 f"{'' if exact else 'at most '}{size}")
            raw = f.read(shape[0] * got.itemsize)
            if len(raw) != shape[0] * got.itemsize:
                raise ValueError(f"{name} is cut short")
        out[name] = np.frombuffer(raw, dtype=got).copy()
    if "meta" not in out:
        raise ValueError("it has no meta record")
    return out

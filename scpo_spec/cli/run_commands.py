"""The commands that read finished runs (a run directory is untrusted data): `scpo audit`,
`runs`, `report` and `export`, and `keygen` for the keys that sign and check them."""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from scpo_spec.cli import command
from scpo_spec.cli.common import _esc, _usage, out


def _need_head_hash(head: str | None) -> None:
    """A --head that is not a SHA-256 in hex is a usage error, not an anchor that fails."""
    if head is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", head.strip()):
        _usage(f"--head {head}: expected the 64 hex digits `scpo train` printed after `head`")


@command()
def audit(run: Path = typer.Argument(..., help="A run directory."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
          head: Optional[str] = typer.Option(None, "--head", metavar="HEX",
                                             help="Fail unless the chain ends "
                                             "exactly at this hash (printed by `scpo train`)."),
          key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 public key: fail "
                                             "unless RUN/signature.json signs the head with it."),
          allow_incomplete: bool = typer.Option(False, "--allow-incomplete",
                                                help="Pass a run that has no end record yet."),
          ) -> None:
    """Re-verify a run from its log alone: the hash chain and every certificate (no torch).
    The stored spec must pass `scpo check` again.  The last line is the run's verdict, as every
    command gives it (CERTIFIED also needs the holdout validation the log holds); the exit code
    is the audit's, which fails exactly the runs `load_run` refuses, and a RUN/verify.json that
    is not consistent with the log (`verify:` says what `scpo verify` proved; it never changes
    the verdict).  Exit 0 passed; 1 any failure, or a run that did not end (unless
    --allow-incomplete); 2 not a run directory, a
    --head that is not a hash or a --key that cannot be read."""
    from scpo_spec.audit.verdict import STORED_SPEC, judge
    if not run.is_dir():
        _usage(f"not a run directory: {run}")
    _need_head_hash(head)
    if key is not None:  # a key that cannot verify is a usage error, said before anything
        from scpo_spec.audit.signing import SigningError, check_public_key
        try:
            check_public_key(key)
        except SigningError as e:
            _usage(f"--key: {e}")
    from scpo_spec.audit.records import EndState
    res, verdict = judge(run, head=head, key=key)
    # exactly what load_run refuses, and a verify record its own numbers or this log contradict
    # (a separate claim: it never changes the verdict, and `scpo verify` replaces it)
    passed = not verdict.refusals(allow_incomplete) and res.verify != "inconsistent"
    stored = next(c for c in verdict.checks if c.name == STORED_SPEC)
    if as_json:
        sys.stdout.write(json.dumps({**res.as_dict(), "passed": passed, **verdict.as_dict()},
                                    indent=2) + "\n")
        raise typer.Exit(0 if passed else 1)
    mark = lambda ok: "[green]✓[/]" if ok else "[red]✗[/]"  # noqa: E731
    out.print(f"{mark(res.chain_ok)} hash chain ({res.steps} steps; head {res.head})",
              soft_wrap=True)
    if res.anchored is not None:
        out.print(f"{mark(res.anchored)} the chain ends at the given head")
    if res.signature is not None:
        out.print(f"{mark(res.signature == 'valid')} signature: {_esc(res.signature)}")
    out.print(f"{mark(res.certificates_ok)} certificates recomputed from the log")
    out.print(f"{mark(res.accepted_violations == 0)} accepted iterates violating a metric: "
              f"{res.accepted_violations}")
    out.print(f"{mark(stored.ok)} the spec file and the header's metrics are the header's "
              "spec text, which passes `scpo check`")
    out.print(f"{mark(res.state_ok)} state file bound to the log" if res.state_present else
              "  state file: absent (the log alone was audited)")
    out.print(f"{mark(res.complete)} run complete"
              + (f" ({_esc(res.end_reason)})" if res.complete else
                 f": {_esc(res.end_reason)} (continue it with `scpo train … --resume`)"
                 if res.end_reason and EndState.of(res.end_reason) is EndState.INTERRUPTED else
                 ": no end record after the last step (killed or cut short)"))
    out.print(f"  updates accepted {res.accepted}, rejected {res.rejected}; certificates "
              f"refuted {res.refutations}; loss {res.loss_first:.6g} → {res.loss_last:.6g}"
              if res.loss_first is not None else "  no initial record")
    if res.proof_every is not None:
        theta0 = {True: "PROVED", False: "not proved", None: "no proof"}[res.theta0_proved]
        out.print(f"  verify every {res.proof_every}: {res.proved_steps} accepted updates "
                  f"PROVED over the whole initial box (θ₀ {theta0}; proofs checked for "
                  "consistency, not redone)", markup=False)
    for name, v in res.worst.items():
        out.print(f"  worst {name}: {v:.6g} ({res.worst_step[name]})", markup=False)
    _say_verify_record(res, run, mark)
    for p in (res.problems + ([stored.detail] if res.spec_ok and not stored.ok else [])
              + res.verify_problems):
        out.print("problem: " + p, markup=False, style="red", soft_wrap=True)
    if head is None and res.signature is None:
        out.print("note: without --head or --key this proves the log is consistent, not that it "
                  "is the log the run wrote (a rewritten, re-hashed log is consistent too)",
                  markup=False, style="dim")
    out.print(("[green]audit passed[/]" if passed else "[red]audit FAILED[/]")
              + f": {_esc(run)}")
    _say_verdict(verdict)  # the report's verdict: the audit, the stored spec and the holdout
    raise typer.Exit(0 if passed else 1)


def _say_verify_record(res, run: Path, mark) -> None:
    """`scpo audit`'s line for RUN/verify.json: what it claims, or why it is not believed."""
    if res.verify == "absent":
        out.print(f"  verify: absent (prove the final policy over the whole initial box with "
                  f"`scpo verify {_esc(run)}`)", soft_wrap=True)
    elif res.verify == "inconsistent":
        out.print(f"{mark(False)} verify: inconsistent (the verify record is not believed; run "
                  f"`scpo verify {_esc(run)}` again)", soft_wrap=True)
    else:
        out.print(f"{mark(True)} verify: {res.verify} (the verify record is chained to the head "
                  "and of the final policy; its proof is not redone here)")


@command()
def runs(folder: Path = typer.Argument(Path("runs"), help="A folder of runs (searched two "
                                       "levels down), or one run directory."),
         as_json: bool = typer.Option(False, "--json", help="Print a JSON list of objects."),
         ) -> None:
    """List the runs under FOLDER (default runs/), oldest first: spec, steps, accepted/rejected,
    loss first → last, the metric closest to its bound, the verdict (as `scpo report` gives it,
    from the log: the holdout as logged, nothing re-run), `scpo verify`'s verdict (from
    RUN/verify.json as `scpo audit` checks it; — none), the head hash, and when it started and
    last wrote (file times).  A directory that cannot be read is a BROKEN row saying why.
    Exit 0 listed (whatever the verdicts); 2 FOLDER does not exist."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table

    from scpo_spec.audit.runs import list_runs
    if not folder.is_dir():
        _usage(f"{'not a folder' if folder.exists() else 'no such folder'}: {folder}")
    rows = list_runs(folder)
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return
    if not rows:
        out.print(f"no runs under {_esc(folder)}")
        return
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    for col, justify in (("run", "left"), ("spec", "left"), ("steps", "right"),
                         ("acc/rej", "right"), ("loss first → last", "right"),
                         ("closest to its bound", "left"), ("verdict", "left"),
                         ("verify", "left"), ("head", "left"), ("started (UTC)", "left"),
                         ("ended (UTC)", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "verdict")
    when = lambda iso: iso.replace("T", " ")[:19] if iso else "—"  # noqa: E731
    for r in rows:
        if r.problem is not None:
            table.add_row(_esc(r.path), "", "", "", "", "", f"[red]BROKEN[/]: {_esc(r.problem)}",
                          "", "", when(r.started), when(r.ended))
            continue
        loss = ("—" if r.loss_first is None else
                f"{r.loss_first:.4g} → {r.loss_last:.4g}")
        worst = ("—" if r.worst_metric is None else
                 f"{r.worst_metric} {r.worst_value:.3g} (≤ {r.worst_bound:g})")
        failed = "; ".join(f.split(" (")[0] for f in r.failures or [])  # --json: in full
        verdict = ("[green]CERTIFIED[/]" if r.verdict == "CERTIFIED" else
                   f"[red]NOT CERTIFIED[/]: {_esc(failed)}")
        proof = {"PROVED": "[green]PROVED[/]", "COUNTEREXAMPLE": "[red]COUNTEREXAMPLE[/]",
                 "UNDECIDED": "[yellow]UNDECIDED[/]",
                 "inconsistent": "[red]inconsistent[/]"}.get(r.verify or "", "—")
        table.add_row(_esc(r.path), _esc(r.spec or "?"), str(r.steps),
                      f"{r.accepted}/{r.rejected}", loss, _esc(worst), verdict, proof,
                      (r.head or "")[:12], when(r.started), when(r.ended))
    natural = Measurement.get(out, out.options.update_width(240), table).maximum
    wide = Console(highlight=False, width=max(out.width, natural), file=out.file,
                   force_terminal=out.is_terminal, no_color=out.no_color)
    wide.print(table)


@command()
def keygen(key: Path = typer.Argument(..., help="Where to write the private key (the public "
                                      "key goes to KEY.pub).")) -> None:
    """Make an Ed25519 key pair for `scpo train --sign KEY` and `scpo audit --key KEY.pub`."""
    from scpo_spec.audit.signing import keygen as make_key
    public = make_key(key)
    out.print(f"private key {_esc(key)} (keep it secret); public key {_esc(public)}")


class ReportFormat(str, Enum):
    html = "html"
    md = "md"
    pdf = "pdf"


def _write_report(run: Path, fmt: ReportFormat, output: Optional[Path], key: Path | None = None,
                  trust_code: bool = False, head: str | None = None):
    from scpo_spec.audit.rundir import RunDir, RunError
    from scpo_spec.report import gather, write_report
    target = output or RunDir(run).report(fmt.value)
    problem = _report_target_problem(target, fmt.value)
    if problem:
        _usage(problem)
    import jinja2
    try:
        evidence = gather(run, key=key, trust_code=trust_code, head=head)
        write_report(evidence, target, fmt.value)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            jinja2.TemplateError) as e:  # a hand-edited log the audit may still pass on
        raise RunError(f"{run}: the log holds values the report cannot show ({type(e).__name__}: "
                       f"{e}); `scpo audit {run}` says what it finds") from None
    return evidence, target


def _report_target_problem(target: Path, fmt: str) -> str | None:
    """Why a report may not be written at `target`: into a run directory only as its own
    report.<fmt> (its log, state and spec copy are never replaced), and never over an existing
    file that is not a .<fmt> file (a spec, say)."""
    from scpo_spec.audit.rundir import RunDir
    where = target.expanduser().resolve()
    home = RunDir(where.parent)
    if home.is_run() and where != home.report(fmt).resolve():
        return (f"--out {target} is inside the run directory {where.parent}, which keeps only "
                f"its own report.{fmt} besides what its log wrote; write the report elsewhere")
    if where.exists() and (not where.is_file() or where.suffix.lower() != f".{fmt}"):
        return f"--out {target} exists and is not a .{fmt} file; refusing to replace it"
    return None


def _say_verdict(verdict, target: Path | None = None) -> None:
    """The verdict (audit.verdict's) in one line, and where its report is, if written."""
    where = f": report {_esc(target)}" if target is not None else ""
    if verdict.certified:
        out.print(f"[green bold]CERTIFIED[/]{where}", soft_wrap=True)
    else:
        out.print(f"[red bold]NOT CERTIFIED[/] ({_esc('; '.join(verdict.failures))}){where}",
                  soft_wrap=True)


@command()
def report(run: Path = typer.Argument(..., help="A run directory."),
           fmt: ReportFormat = typer.Option(ReportFormat.html, "--format",
                                            help="html (standalone page), md (for review) or "
                                            "pdf (the page printed by headless Chromium)."),
           output: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write "
                                                 "(default RUN/report.html|md|pdf)."),
           head: Optional[str] = typer.Option(None, "--head", metavar="HEX",
                                              help="The head hash `scpo "
                                              "train` printed, kept outside the run: NOT "
                                              "CERTIFIED unless the chain ends exactly there."),
           key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 public key the "
                                              "run's signature must verify with."),
           trust_code: bool = typer.Option(False, "--trust-code", help="Run the code the "
                                           "run's spec names (a python plant, a TorchScript "
                                           "backup…) to draw the final policy's rollouts, once "
                                           "its files match the SHA-256 the run recorded."),
           ) -> None:
    """Write the certification report of a run (from its log and state file; never re-trains,
    never imports or unpickles anything from the run, and runs code the spec names only with
    --trust-code).  Exit 0 when the report was written, whatever its verdict (the verdict is
    printed; `scpo audit` is the pass/fail check); 1 it could not be written (written whole or
    not at all); 2 an --out inside a run directory other than its own report.<format>, an
    existing file that is not a .<format> file (never replaced), or a --head that is not a
    hash.  Without --head (or --key) the report proves the log consistent, not that it is the
    log the run wrote: a reviewer passes the head they were given."""
    from scpo_spec.audit.rundir import RunDir
    if not RunDir(run).is_run():
        _usage(f"not a run directory (no audit.jsonl): {run}")
    _need_head_hash(head)
    evidence, target = _write_report(run, fmt, output, key, trust_code, head)
    _say_verdict(evidence.verdict, target)


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@command()
def export(run: Path = typer.Argument(..., help="A run directory."),
           fmt: ExportFormat = typer.Option(..., "--format", help="onnx or torchscript."),
           output: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write "
                                                 "(default ./RUN-NAME.onnx or ./RUN-NAME.pt; "
                                                 "never inside the run directory)."),
           force: bool = typer.Option(False, "--force", help="Export a run that is NOT "
                                      "CERTIFIED; the file says so (forced: true)."),
           trust_code: bool = typer.Option(False, "--trust-code", help="Load the TorchScript "
                                           "files the run's spec names (their SHA-256 is "
                                           "checked against the run's header)."),
           ) -> None:
    """Write a run's certified policy (backup included, float64, states (N, n) → inputs (N, m))
    as ONNX or TorchScript, its identity in the file's metadata: the spec's SHA-256, the audit
    log's head hash, θ's hash and the verdict.  Exit 0 written; 1 the run is NOT CERTIFIED
    (without --force), fails its audit, or the policy cannot be written; 2 usage errors."""
    from scpo_spec.audit.rundir import RunDir
    from scpo_spec.export import export_run
    if not RunDir(run).is_run():
        _usage(f"not a run directory (no audit.jsonl): {run}")
    done = export_run(run, fmt.value, output, force=force, trust_code=trust_code)
    meta = done.metadata
    checked = ("" if done.max_error is None else
               f"; matches the run's policy to {done.max_error:.1e} on 64 random states")
    verdict = ("[green bold]CERTIFIED[/]" if meta["verdict"] == "CERTIFIED"
               else "[red bold]NOT CERTIFIED[/] (forced)")
    out.print(f"{verdict} policy written to {_esc(done.path)}{checked}", soft_wrap=True)
    out.print(f"spec {meta['spec_sha256']}\nhead {meta['head']}\ntheta {meta['theta_sha256']}",
              markup=False)

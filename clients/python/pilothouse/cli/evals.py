"""``pilothouse eval``: run an eval suite on a prompt version, and read its reports.

pilothouse eval run --suite S --prompt-version V [--parallel N] [--min-score X]
pilothouse eval report [NAME] [--suite S] [--prompt-version V] [-o table|json|yaml]

``run`` sends each case to the executor (AgentService.RunEvalCase), which runs it as an
ordinary run of the suite's agent on the version and grades it, then files the report
with the control plane. A report is filed whole or not at all: when a case cannot run,
nothing is filed, and running again with the same ``--report-id`` reuses the runs the
cases already made.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

from pilothouse.cli import output
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.errors import ApiError
from pilothouse.v1 import agent_pb2, run_pb2
from pilothouse.v1 import eval_pb2 as pb


def _name(tenant: str | None, name: str, collection: str) -> str:
    if name.startswith("tenants/"):
        return name
    if not tenant:
        raise UsageError(f"{name!r} is a short name: say which tenant (--tenant)")
    return f"tenants/{tenant}/{collection}/{name}"


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def report_id(suite: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{_short(suite)[:36].rstrip('-')}-{stamp}-{secrets.token_hex(2)}"


async def run_suite(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    suite_name = _name(tenant, ns.suite, "evalSuites")
    suite = (
        await client.call(client.evals.GetEvalSuite, pb.GetEvalSuiteRequest(name=suite_name))
    ).eval_suite
    agent = (
        await client.call(client.agents.GetAgent, agent_pb2.GetAgentRequest(name=suite.agent))
    ).agent
    version = (
        ns.prompt_version
        if ns.prompt_version.startswith("tenants/")
        else f"{agent.prompt}/versions/{ns.prompt_version}"
    )
    rid = ns.report_id or report_id(suite.name)
    slots = asyncio.Semaphore(max(1, ns.parallel))

    async def one(case: pb.EvalCase) -> pb.EvalCaseResult:
        async with slots:
            request = run_pb2.RunEvalCaseRequest(
                agent=suite.agent, prompt_version=version, report_id=rid, case=case
            )
            try:
                answered = await client.call(
                    client.runs.RunEvalCase, request, timeout=ns.case_timeout
                )
            except ApiError as e:
                e.message = (
                    f"case {case.id}: {e.message} (nothing filed; run again with "
                    f"--report-id {rid} to reuse the runs made)"
                )
                raise
            return answered.result

    results = await asyncio.gather(*(one(case) for case in suite.cases))
    filed = await client.call(
        client.evals.CreateEvalReport,
        pb.CreateEvalReportRequest(
            parent=suite.name.rsplit("/", 2)[0],
            report_id=rid,
            report=pb.EvalReport(
                suite=suite.name, suite_etag=suite.etag, prompt_version=version, cases=results
            ),
        ),
    )
    report = filed.report
    if ns.output == "table":
        print(report_view(report))
    else:
        print(output.dump(output.as_dict(report), ns.output))
    if ns.min_score is not None and report.score < ns.min_score:
        return 1
    return 0


def report_view(report: pb.EvalReport) -> str:
    head = (
        f"Report {report.name}\n"
        f"  suite {report.suite} on {report.prompt_version}\n"
        f"  score {report.score:.3f}: {report.passed_cases} of {report.total_cases} cases passed"
    )
    if not report.cases:
        return head
    rows = [
        [
            c.case_id,
            f"{c.score:.2f}",
            "pass" if all(g.score >= 0.5 for g in c.grades) else "FAIL",
            c.stop_reason,
            "; ".join(
                f"{pb.Grader.Name(g.grader).removeprefix('GRADER_').lower()} {g.score:.2f}"
                f" ({g.detail})"
                for g in c.grades
            ),
        ]
        for c in report.cases
    ]
    return head + "\n\n" + output.table(["CASE", "SCORE", "RESULT", "RUN", "GRADES"], rows)


async def show_reports(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    if ns.name:
        got = await client.call(
            client.evals.GetEvalReport,
            pb.GetEvalReportRequest(name=_name(tenant, ns.name, "evalReports")),
        )
        if ns.output == "table":
            print(report_view(got.report))
        else:
            print(output.dump(output.as_dict(got.report), ns.output))
        return 0
    if not tenant:
        raise UsageError("say which tenant (--tenant or PILOTHOUSE_TENANT)")
    listed = await client.call(
        client.evals.ListEvalReports,
        pb.ListEvalReportsRequest(
            parent=f"tenants/{tenant}",
            suite=_name(tenant, ns.suite, "evalSuites") if ns.suite else "",
            prompt_version=ns.prompt_version or "",
            page_size=ns.limit,
        ),
    )
    if ns.output != "table":
        print(output.dump([output.as_dict(r) for r in listed.reports], ns.output))
        return 0
    if not listed.reports:
        print("No eval reports found.")
        return 0
    rows = [
        [
            _short(r.name),
            _short(r.suite),
            _short(r.prompt_version),
            f"{r.score:.3f}",
            f"{r.passed_cases}/{r.total_cases}",
            r.create_time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for r in listed.reports
    ]
    print(output.table(["REPORT", "SUITE", "VERSION", "SCORE", "PASSED", "CREATED"], rows))
    return 0


async def command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    if ns.eval_command == "run":
        return await run_suite(client, ns, tenant)
    return await show_reports(client, ns, tenant)


def add_commands(sub: Any, common: argparse.ArgumentParser, fmt: dict[str, Any]) -> None:
    evals = sub.add_parser("eval", help="eval suites' runs and reports")
    actions = evals.add_subparsers(dest="eval_command", required=True)
    run = actions.add_parser(
        "run", help="run a suite on a prompt version and file its report", parents=[common]
    )
    run.add_argument("--suite", required=True, help="suite id or full name")
    run.add_argument("--prompt-version", required=True, help="version id or full name")
    run.add_argument("--parallel", type=int, default=4, help="cases at once (4)")
    run.add_argument("--report-id", help="default: the suite's id, the time and 4 hex digits")
    run.add_argument("--case-timeout", type=float, default=600.0, help="seconds a case (600)")
    run.add_argument("--min-score", type=float, help="exit 1 when the score is below this")
    run.add_argument("-o", "--output", **fmt)
    report = actions.add_parser("report", help="list reports, or show one", parents=[common])
    report.add_argument("name", nargs="?", help="a report id or full name")
    report.add_argument("--suite", help="only this suite's reports")
    report.add_argument("--prompt-version", help="only reports on this version (full name)")
    report.add_argument("--limit", type=int, default=50)
    report.add_argument("-o", "--output", **fmt)

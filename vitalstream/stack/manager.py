"""`vitalstream stack up|down|status|logs`: idempotent control of the local stack."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from vitalstream.settings import Settings
from vitalstream.stack.process import StackError, tail, wait_until
from vitalstream.stack.services import Service, all_services


@dataclass
class ServiceStatus:
    name: str
    url: str
    healthy: bool
    managed: bool  # started by this stack (False: an external service we use as is)
    pid: int | None
    log: str
    notes: list[str] = field(default_factory=list)


def _safe_healthy(service: Service) -> bool:
    try:
        return bool(service.healthy())
    except Exception:
        return False


def status(settings: Settings) -> dict[str, ServiceStatus]:
    services = all_services(settings)
    with ThreadPoolExecutor(len(services)) as pool:
        health = list(pool.map(_safe_healthy, services))
    return {
        s.name: ServiceStatus(s.name, s.display_url, ok, s.managed_pid() is not None, s.managed_pid(), str(s.log_path))
        for s, ok in zip(services, health)
    }


def _bring_up(service: Service, log=print) -> ServiceStatus:
    """Start one service unless something healthy already answers at its URL."""
    t0 = time.monotonic()
    pid = service.managed_pid()
    if not _safe_healthy(service):
        if pid is None:
            service.check_prerequisites()
            service.start()
        ok = wait_until(lambda: service.managed_pid() is not None and service.healthy(),
                        timeout_s=service.start_timeout_s, interval_s=0.5)
        if not ok:
            alive = service.managed_pid() is not None
            state = "did not become healthy" if alive else "exited"
            raise StackError(f"{service.name} failed to start ({state} within {service.start_timeout_s:.0f} s); "
                             f"log: {service.log_path}\n{tail(service.log_path)}")
    notes = service.after_healthy()
    pid = service.managed_pid()
    log(f"  [green]✓[/] {service.name:<9} {service.display_url:<42} "
        f"{'running' if pid else 'external'}{f' (pid {pid})' if pid else ''} in {time.monotonic() - t0:.1f} s"
        + "".join(f"\n              {n}" for n in notes))
    return ServiceStatus(service.name, service.display_url, True, pid is not None, pid, str(service.log_path), notes)


def up(settings: Settings, log=print) -> dict[str, ServiceStatus]:
    """Bring every service up and wait until each is healthy. Safe to run again."""
    services = {s.name: s for s in all_services(settings)}
    for s in services.values():  # fail fast, before starting anything, on a missing prerequisite
        if s.managed_pid() is None and not _safe_healthy(s):
            s.check_prerequisites()
    result: dict[str, ServiceStatus] = {}
    # Independent services come up in parallel; MLflow waits for PostgreSQL and S3.
    with ThreadPoolExecutor(4) as pool:
        futures = {n: pool.submit(_bring_up, services[n], log) for n in ("kafka", "redis", "postgres", "s3")}
        errors = []
        for name in ("postgres", "s3", "redis", "kafka"):
            try:
                result[name] = futures[name].result()
            except Exception as exc:  # collect every failure, not just the first
                errors.append(str(exc))
            if name == "s3" and not errors:
                mlflow_future = pool.submit(_bring_up, services["mlflow"], log)
        if not errors:
            try:
                result["mlflow"] = mlflow_future.result()
            except Exception as exc:
                errors.append(str(exc))
    if errors:
        raise StackError("\n".join(errors))
    return {n: result[n] for n in services}


def down(settings: Settings, log=print) -> list[str]:
    """Stop what this stack started (external services are left alone), MLflow first."""
    stopped = []
    for service in reversed(all_services(settings)):
        if service.stop():
            stopped.append(service.name)
            log(f"  stopped {service.name}")
    return stopped


def as_json(statuses: dict[str, ServiceStatus]) -> dict[str, dict]:
    return {name: asdict(st) for name, st in statuses.items()}

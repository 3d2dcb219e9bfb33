"""Where peer groups run: Ray actors (default; local or a cluster via ``engine.address``) or
in-process objects with the same call pattern (``engine.backend: local``, for debugging)."""

from __future__ import annotations

from typing import Any


class _LocalCall:
    def __init__(self, fn) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        return self._fn(*args)

    def options(self, **_: Any) -> _LocalCall:
        return self


class _LocalHandle:
    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> _LocalCall:
        return _LocalCall(getattr(self._obj, name))


class LocalBackend:
    name = "local"

    def actor(self, cls: type, *args: Any, num_cpus: float = 1.0) -> Any:
        return _LocalHandle(cls(*args))

    def put(self, obj: Any) -> Any:
        return obj

    def kill(self, handles: list[Any]) -> None:
        pass

    def get(self, refs: Any) -> Any:
        return refs

    def shutdown(self) -> None:
        pass


class RayBackend:
    """Peers in Ray actors; messages travel through Ray's object store (actors receive the
    ObjectRefs of every group's parameters and fetch them; the driver never materialises them)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        import os

        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU simulation: silence Ray's GPU tip
        import ray

        self.ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kw: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": True,
                "logging_level": "ERROR",
                "configure_logging": True,
            }
            if address:
                kw["address"] = address
            else:  # "local": never attach silently to a cluster some `ray start` left on this machine
                kw |= {"address": "local", "num_cpus": num_cpus}
            ray.init(**kw)

    def actor(self, cls: type, *args: Any, num_cpus: float = 1.0) -> Any:
        return self.ray.remote(num_cpus=num_cpus)(cls).remote(*args)

    def put(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def kill(self, handles: list[Any]) -> None:
        """Free the actors' CPUs now (a shared Ray session may run more scenarios after this one)."""
        for h in handles:
            try:
                self.ray.kill(h)
            except Exception:  # already dead
                pass

    def get(self, refs: Any) -> Any:
        return self.ray.get(refs)

    def shutdown(self) -> None:
        if self._started:
            self.ray.shutdown()


def make_backend(kind: str, address: str | None, num_cpus: int | None = None) -> LocalBackend | RayBackend:
    return LocalBackend() if kind == "local" else RayBackend(address, num_cpus)

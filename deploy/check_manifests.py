#!/usr/bin/env python3
"""Checks rendered natter manifests for what only an API server or a live cluster would catch.

Schema validation (kubernetes-validate) says each object is well-formed; this says the
objects fit together and fit the binaries they run:

- every Service selects pods, and its targetPorts are ports of those pods;
- every referenced ConfigMap, Secret (and key), PVC and volume exists;
- the NetworkPolicies let each service reach what its configuration points at (NATS,
  Postgres) and let NATS servers reach each other's routes;
- HPA and PDB targets exist; probes and scrape annotations name real ports;
- NATS routes match the StatefulSet's replicas, headless Service and ports; JetStream's
  store is a per-pod volume; the stream fits in it;
- each grace period exceeds the drain (or shutdown) timeout plus the preStop;
- every pod is non-root, read-only, capability-free, seccomp'd, resourced and probed;
- every natter container's flags and environment are accepted by the binary it runs:
  `<binary> --check-config <args>` with the container's resolved environment, and every
  variable the container sets is one the binary reads.

Usage:
  check_manifests.py --bin-dir target/debug RENDERED.yaml...   check rendered overlays
  check_manifests.py --bin-dir target/debug --self-test R.yaml  break a copy on purpose,
                                                                one way at a time, and
                                                                prove each is caught

Ends with "N passed, M failed" and exits 1 on any failure.
"""

import argparse
import base64
import copy
import os
import re
import subprocess
import sys
import tempfile

import yaml

NATTER_BINARIES = {"natter-edge", "natter-archiver", "natter-filestore", "natter-bots"}
# Settings every natter service reads and that must come from the one shared ConfigMap.
SHARED_KEYS = [
    "NATS_URL",
    "NATTER_STREAM_REPLICAS",
    "NATTER_STREAM_MAX_AGE_SECS",
    "NATTER_STREAM_MAX_BYTES",
    "NATTER_PRESENCE_TTL_SECS",
]
SHARED_CONFIGMAP = "natter-config"
# Services with an image of their own (Dockerfile targets <svc> and <svc>-prebuilt).
SERVICES = ("edge", "archiver", "filestore", "bots")
# How long a natter service may take to stop after SIGTERM, by binary: the setting and
# its default.
SHUTDOWN_SETTING = {
    "natter-edge": ("NATTER_DRAIN_TIMEOUT_SECS", 20),
    "natter-archiver": ("NATTER_ARCHIVER_SHUTDOWN_SECS", 20),
    "natter-filestore": ("NATTER_SHUTDOWN_GRACE_SECS", 25),
    "natter-bots": ("NATTER_SHUTDOWN_GRACE_SECS", 10),
}
# Seconds a pod needs after its drain/shutdown ends (close sockets, flush, exit).
EXIT_MARGIN = 5
# Containers that are helpers of another (no probes of their own).
SIDECARS = {"prom-exporter"}
AFFINITY_ANNOTATIONS = ("nginx.ingress.kubernetes.io/affinity", "nginx.ingress.kubernetes.io/session-cookie")
WS_TIMEOUT_MIN = 3600


class Report:
    def __init__(self, quiet=False):
        self.passed = 0
        self.failures = []
        self.quiet = quiet
        self.scope = ""

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{self.scope}: {what}")
            if not self.quiet:
                print(f"FAIL {self.scope}: {what}")
        return ok


def binary_of(image):
    """natter-edge for natter-edge, natter-edge:dev, registry/x/natter-edge@sha256:..."""
    name = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return name if name in NATTER_BINARIES else None


def parse_duration(s):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)?\s*", str(s))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def parse_size(s):
    """NATS and Kubernetes sizes in bytes: 9GB (NATS: powers of 1024), 10Gi (Kubernetes:
    powers of 1024), 10G (Kubernetes: powers of 1000), 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)(B?)\s*", str(s), re.I)
    if not m:
        return None
    n, unit, binary_i, nats_b = float(m.group(1)), m.group(2).upper(), m.group(3), m.group(4)
    power = "KMGT".index(unit) + 1 if unit else 0
    base = 1024 if (binary_i or nats_b) else 1000
    return int(n * (base**power))


def parse_nats_conf(text):
    """The few fields of nats.conf this check needs (flat keys and the cluster/jetstream
    blocks); not a general parser."""
    conf, stack = {}, []
    in_routes = False
    routes = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if in_routes:
            if line.startswith("]"):
                in_routes = False
                continue
            routes += [r for r in re.split(r"[\s,]+", line) if r]
            continue
        m = re.match(r"^(\w+)\s*[:=]?\s*\{$", line)
        if m:
            stack.append(m.group(1))
            continue
        if line == "}":
            if stack:
                stack.pop()
            continue
        m = re.match(r"^(\w+)\s*[:=]\s*\[(.*)$", line)
        if m and m.group(1) == "routes":
            rest = m.group(2)
            if "]" in rest:
                routes += [r for r in re.split(r"[\s,]+", rest.split("]")[0]) if r]
            else:
                in_routes = True
                routes += [r for r in re.split(r"[\s,]+", rest) if r]
            continue
        m = re.match(r"^(\w+)\s*[:=]\s*(.+?)\s*,?$", line)
        if m:
            key = ".".join(stack + [m.group(1)])
            conf[key] = m.group(2).strip().strip('"')
    conf["cluster.routes"] = routes
    return conf


class Manifests:
    def __init__(self, docs):
        self.docs = [d for d in docs if d]
        self.by_kind = {}
        for d in self.docs:
            self.by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    def get(self, kind, name):
        return self.by_kind.get(kind, {}).get(name)

    def all(self, kind):
        return list(self.by_kind.get(kind, {}).values())

    def workloads(self):
        return self.all("Deployment") + self.all("StatefulSet")

    def pods_selected(self, selector):
        """Workloads whose pod template labels carry every selector label."""
        if not selector:
            return []
        return [
            w
            for w in self.workloads()
            if all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def configmap_data(self, name):
        cm = self.get("ConfigMap", name)
        return None if cm is None else dict(cm.get("data") or {})

    def secret_data(self, name):
        s = self.get("Secret", name)
        if s is None:
            return None
        out = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        out.update(s.get("stringData") or {})
        return out


def container_ports(pod_spec):
    names, numbers = {}, set()
    for c in pod_spec.get("containers", []):
        for p in c.get("ports", []):
            numbers.add(p["containerPort"])
            if "name" in p:
                names[p["name"]] = p["containerPort"]
    return names, numbers


def port_exists(port, pod_spec):
    names, numbers = container_ports(pod_spec)
    return port in names if isinstance(port, str) else port in numbers


def port_number(port, pod_spec):
    names, _ = container_ports(pod_spec)
    return names.get(port) if isinstance(port, str) else port


def admitted(m, client, target, number):
    """Whether the NetworkPolicies let pods of workload `client` reach container port
    `number` of pods of workload `target` (same namespace)."""
    target_pod = target["spec"]["template"]["spec"]
    client_labels = client["spec"]["template"]["metadata"].get("labels", {})
    policies = [
        np
        for np in m.all("NetworkPolicy")
        if "Ingress" in np["spec"].get("policyTypes", ["Ingress"])
        and target in m.pods_selected(np["spec"]["podSelector"].get("matchLabels", {}))
    ]
    if not policies:
        return True
    for np in policies:
        for rule in np["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(port_number(p["port"], target_pod) == number for p in ports):
                continue
            peers = rule.get("from")
            if not peers or any(
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and all(client_labels.get(k) == v for k, v in peer["podSelector"].get("matchLabels", {}).items())
                for peer in peers
            ):
                return True
    return False


def service_backend(m, host, port):
    """(workload, container port number) behind Service `host` port `port`, or None."""
    svc = m.get("Service", host)
    if svc is None:
        return None
    for p in svc["spec"]["ports"]:
        if p["port"] == port:
            for w in m.pods_selected(svc["spec"].get("selector", {})):
                return w, port_number(p.get("targetPort", p["port"]), w["spec"]["template"]["spec"])
    return None


def check_network_policies(m, report):
    for np in m.all("NetworkPolicy"):
        report.scope = f"NetworkPolicy/{np['metadata']['name']}"
        targets = m.pods_selected(np["spec"]["podSelector"].get("matchLabels", {}))
        report.check(len(targets) > 0, "podSelector selects pods of a workload")
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    sel = peer["podSelector"].get("matchLabels", {})
                    report.check(len(m.pods_selected(sel)) > 0, f"from podSelector {sel} selects pods of a workload")
            for p in rule.get("ports", []):
                report.check(
                    all(port_exists(p["port"], w["spec"]["template"]["spec"]) for w in targets),
                    f"port {p['port']} is a container port of the selected pods",
                )
    # NATS servers reach each other's route port.
    nats = m.get("StatefulSet", "nats")
    if nats:
        report.scope = "NetworkPolicy"
        cluster = port_number("cluster", nats["spec"]["template"]["spec"])
        report.check(admitted(m, nats, nats, cluster), "NATS servers may reach each other's cluster port")


def check_reachable(m, report, w, url_env, env):
    """Every Service a natter container is configured to use is one its pods may reach."""
    for key, default_port in url_env:
        for url in env.get(key, "").split(","):
            mm = re.match(r"^[a-z]+://(?:[^@/]*@)?([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", url.strip())
            if not mm:
                continue
            backend = service_backend(m, mm.group(1), int(mm.group(2)))
            if report.check(backend is not None, f"{key}: Service {mm.group(1)} has port {mm.group(2)} and selects pods"):
                target, number = backend
                report.check(
                    admitted(m, w, target, number),
                    f"{key}: NetworkPolicies let {w['metadata']['name']} pods reach {target['metadata']['name']}:{number}",
                )


def resolve_env(m, container, report, pod_name="pod-0"):
    """The container's environment as the kubelet would build it, and the names it set
    explicitly (env) and through envFrom, each with where they came from."""
    env, origin = {}, {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            data = m.configmap_data(name)
            report.check(data is not None, f"envFrom ConfigMap {name} exists")
            for k, v in (data or {}).items():
                env[k], origin[k] = v, ("configmap", name)
        if "secretRef" in src:
            name = src["secretRef"]["name"]
            data = m.secret_data(name)
            report.check(data is not None, f"envFrom Secret {name} exists")
            for k, v in (data or {}).items():
                env[k], origin[k] = v, ("secret", name)
    for e in container.get("env", []):
        name = e["name"]
        if "value" in e:
            value = e["value"]
            for ref in re.findall(r"\$\((\w+)\)", value):
                report.check(ref in env, f"env {name} refers to $({ref}), defined before it")
            value = re.sub(r"\$\((\w+)\)", lambda mm: env.get(mm.group(1), mm.group(0)), value)
            env[name], origin[name] = value, ("value", None)
            continue
        vf = e.get("valueFrom", {})
        if "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            data = m.configmap_data(ref["name"])
            ok = report.check(data is not None and ref["key"] in data, f"env {name}: ConfigMap {ref['name']} has key {ref['key']}")
            env[name], origin[name] = (data[ref["key"]] if ok else ""), ("configmap", ref["name"])
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            data = m.secret_data(ref["name"])
            ok = report.check(data is not None and ref["key"] in data, f"env {name}: Secret {ref['name']} has key {ref['key']}")
            env[name], origin[name] = (data[ref["key"]] if ok else ""), ("secret", ref["name"])
        elif "fieldRef" in vf:
            env[name], origin[name] = pod_name, ("field", None)
        elif "resourceFieldRef" in vf:
            env[name], origin[name] = "1073741824", ("resource", None)
        else:
            report.check(False, f"env {name} has a value or a known valueFrom")
    return env, origin


def materialize_mounts(m, pod, container, root):
    """Lay the container's volumes out under `root` as the kubelet would mount them
    (ConfigMap and Secret keys as files; other volumes empty); (mountPath, local path)
    pairs, longest mountPath first."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out = []
    for i, mnt in enumerate(container.get("volumeMounts", [])):
        vol = volumes.get(mnt["name"], {})
        local = os.path.join(root, f"{i}-{mnt['name']}")
        os.makedirs(local, exist_ok=True)
        data = {}
        if "configMap" in vol:
            data = m.configmap_data(vol["configMap"]["name"]) or {}
            items = vol["configMap"].get("items")
        elif "secret" in vol:
            data = m.secret_data(vol["secret"]["secretName"]) or {}
            items = vol["secret"].get("items")
        else:
            items = None
        if items:
            data = {it["path"]: data[it["key"]] for it in items if it["key"] in data}
        for key, value in data.items():
            path = os.path.join(local, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(value)
        if mnt.get("subPath"):
            local = os.path.join(local, mnt["subPath"])
        out.append((mnt["mountPath"].rstrip("/"), local))
    return sorted(out, key=lambda p: -len(p[0]))


def rewrite_path(value, mounts):
    for mount_path, local in mounts:
        if value == mount_path or value.startswith(mount_path + "/"):
            return local + value[len(mount_path):]
    return value


def expand_args(args, env):
    return [re.sub(r"\$\((\w+)\)", lambda mm: env.get(mm.group(1), mm.group(0)), a) for a in args]


class BinaryInfo:
    """What a natter binary accepts, from its --help: flags and environment variables."""

    cache = {}

    def __init__(self, path):
        self.path = path
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
        self.help = out.stdout + out.stderr
        self.flags = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", self.help))
        # `[env: NAME=value]`, or `[env: NAME]` where clap hides the value (secrets)
        self.envs = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", self.help))
        self.has_check_config = "--check-config" in self.flags

    def default(self, flag):
        m = re.search(re.escape(flag) + r"[ =<].*?\[default: ([^\]]+)\]", self.help, re.S)
        return m.group(1) if m else None

    @classmethod
    def of(cls, path):
        if path not in cls.cache:
            cls.cache[path] = cls(path)
        return cls.cache[path]


def check_workload_pods(m, report, bin_dir):
    for w in m.workloads():
        kind, name = w["kind"], w["metadata"]["name"]
        report.scope = f"{kind}/{name}"
        spec = w["spec"]
        tmpl = spec["template"]
        pod = tmpl["spec"]
        labels = tmpl["metadata"].get("labels", {})
        sel = spec.get("selector", {}).get("matchLabels", {})
        report.check(sel and all(labels.get(k) == v for k, v in sel.items()), "selector matches the pod template's labels")
        report.check(
            tmpl["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "natter",
            "pods carry app.kubernetes.io/part-of=natter",
        )

        # Scrape annotations on every pod; a scraped port must be a container port.
        ann = tmpl["metadata"].get("annotations", {})
        report.check("prometheus.io/scrape" in ann, "pod has a prometheus.io/scrape annotation")
        if ann.get("prometheus.io/scrape") == "true":
            port = ann.get("prometheus.io/port", "")
            report.check(port.isdigit() and port_exists(int(port), pod), f"prometheus.io/port {port} is a container port")

        # Pod security.
        psc = pod.get("securityContext", {})
        report.check(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
        report.check(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, "pod runs as a numeric non-zero uid")
        report.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile RuntimeDefault")
        report.check(pod.get("automountServiceAccountToken") is False, "no service account token (nothing talks to the API)")

        # Volumes: every mount has a volume; every volume's source exists.
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claim_templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        for vname, v in volumes.items():
            if "configMap" in v:
                report.check(m.get("ConfigMap", v["configMap"]["name"]) is not None, f"volume {vname}: ConfigMap {v['configMap']['name']} exists")
            if "secret" in v:
                report.check(m.get("Secret", v["secret"]["secretName"]) is not None, f"volume {vname}: Secret {v['secret']['secretName']} exists")
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                report.check(m.get("PersistentVolumeClaim", claim) is not None, f"volume {vname}: PVC {claim} exists")

        for c in pod.get("containers", []):
            report.scope = f"{kind}/{name}/{c['name']}"
            image = c.get("image", "")
            report.check(":" in image.rsplit("/", 1)[-1] or "@" in image, f"image {image} is pinned (tag or digest)")
            report.check(not image.endswith(":latest"), f"image {image} is not :latest")
            for mnt in c.get("volumeMounts", []):
                report.check(mnt["name"] in volumes or mnt["name"] in claim_templates, f"mount {mnt['mountPath']}: volume {mnt['name']} exists")
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    report.check(r in res.get(section, {}), f"resources.{section}.{r} set")
            sc = c.get("securityContext", {})
            report.check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
            report.check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
            report.check("ALL" in sc.get("capabilities", {}).get("drop", []), "capabilities drop ALL")
            if c["name"] not in SIDECARS:
                for probe in ("readinessProbe", "livenessProbe"):
                    report.check(probe in c, f"has a {probe}")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                p = c.get(probe, {})
                for how in ("httpGet", "tcpSocket", "grpc"):
                    if how in p:
                        report.check(port_exists(p[how]["port"], pod), f"{probe} port {p[how]['port']} is a container port")
            binary = binary_of(image)
            if binary:
                check_natter_container(m, report, w, c, binary, bin_dir)


def pre_stop_seconds(c):
    ps = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in ps:
        return int(ps["sleep"]["seconds"])
    return 0


def setting(args, env, info, flag, env_name):
    """A setting as the binary resolves it: the flag, else the variable, else its default."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    if env_name in env:
        return env[env_name]
    return info.default(flag)


def check_addresses(report, w, c, info, args, env):
    """Both addresses listen on all interfaces on container ports; probes and scrapes go to
    the operations address (--ops-listen where the binary has one, else --listen)."""
    pod = w["spec"]["template"]["spec"]
    listen = setting(args, env, info, "--listen", "NATTER_LISTEN") or ""
    ops = setting(args, env, info, "--ops-listen", "NATTER_OPS_LISTEN") if "--ops-listen" in info.flags else listen
    ops = ops or ""
    for what, addr in (("--listen", listen), ("--ops-listen", ops)):
        if not report.check(re.fullmatch(r"(0\.0\.0\.0|\[::\]):\d+", addr) is not None, f"{what} {addr} listens on all interfaces"):
            return
        report.check(port_exists(int(addr.rsplit(":", 1)[1]), pod), f"{what} port of {addr} is a container port")
    ops_port = int(ops.rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        http_get = c.get(probe, {}).get("httpGet")
        if http_get:
            report.check(port_number(http_get["port"], pod) == ops_port, f"{probe} goes to the operations address {ops}")
    ann = w["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") == "true":
        report.check(ann.get("prometheus.io/port") == str(ops_port), f"Prometheus scrapes the operations address {ops}")


def check_natter_container(m, report, w, c, binary, bin_dir):
    pod = w["spec"]["template"]["spec"]
    env, origin = resolve_env(m, c, report, pod_name=f"{w['metadata']['name']}-0")

    # The shared settings come from the one ConfigMap, never from a private value.
    for key in SHARED_KEYS:
        src = origin.get(key)
        report.check(
            src is not None and src[0] == "configmap" and src[1].startswith(SHARED_CONFIGMAP),
            f"{key} comes from ConfigMap {SHARED_CONFIGMAP}",
        )
    # The grace period outlasts the drain or shutdown plus the preStop.
    setting, default = SHUTDOWN_SETTING[binary]
    shutdown = str(env.get(setting, default))
    if report.check(shutdown.isdigit(), f"{setting} is a number of seconds ({shutdown!r})"):
        grace = pod.get("terminationGracePeriodSeconds", 30)
        need = int(shutdown) + pre_stop_seconds(c) + EXIT_MARGIN
        report.check(grace >= need, f"terminationGracePeriodSeconds {grace} >= {setting} {shutdown} + preStop {pre_stop_seconds(c)} + {EXIT_MARGIN}")

    # NATS_URL names a Service that exposes the port.
    nats_url = env.get("NATS_URL", "")
    for url in nats_url.split(","):
        mm = re.fullmatch(r"nats://([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", url.strip())
        svc = m.get("Service", mm.group(1)) if mm else None
        report.check(
            svc is not None and any(p["port"] == int(mm.group(2)) for p in svc["spec"]["ports"]),
            f"NATS_URL {url} is a Service port",
        )

    check_reachable(m, report, w, [("NATS_URL", 4222), ("DATABASE_URL", 5432)], env)

    # The binary accepts the flags and the environment.
    path = os.path.join(bin_dir, binary)
    if not report.check(os.access(path, os.X_OK), f"binary {path} exists (build it first)"):
        return
    info = BinaryInfo.of(path)
    args = expand_args(c.get("args", []), env)
    if c.get("command"):
        report.check(False, "no command override (the image's tini entrypoint must stay PID 1)")
    for a in args:
        if a.startswith("--"):
            report.check(a.split("=", 1)[0] in info.flags, f"{binary} knows flag {a.split('=', 1)[0]}")
    check_addresses(report, w, c, info, args, env)
    referenced = set()
    for v in [e.get("value", "") for e in c.get("env", [])] + c.get("args", []):
        referenced.update(re.findall(r"\$\((\w+)\)", v))
    explicit = [e["name"] for e in c.get("env", [])]
    for name in explicit + [k for k, o in origin.items() if o[0] == "configmap" and k not in explicit]:
        if name in referenced and name not in info.envs:
            continue  # only an ingredient of another variable (e.g. a password in a URL)
        shared_only = origin.get(name, ("",))[0] == "configmap" and name not in explicit
        if shared_only and name not in SHARED_KEYS and name != "NATTER_LOG_FORMAT":
            # Keys of the shared ConfigMap meant for one service arrive through envFrom
            # in the others too; only explicit ones must be read.
            continue
        report.check(name in info.envs, f"{binary} reads environment variable {name}")
    if report.check(info.has_check_config, f"{binary} has --check-config"):
        # Files the container reads from its volumes (e.g. the token key) exist here too.
        with tempfile.TemporaryDirectory(prefix="natter-check-mounts-") as root:
            mounts = materialize_mounts(m, pod, c, root)
            run_env = {"PATH": "/usr/bin:/bin"}
            run_env.update({k: rewrite_path(v, mounts) for k, v in env.items()})
            run_args = [rewrite_path(a, mounts) for a in args]
            out = subprocess.run([path, "--check-config"] + run_args, env=run_env, capture_output=True, text=True, timeout=30)
        report.check(
            out.returncode == 0,
            f"{binary} --check-config accepts the container's flags and env (exit {out.returncode}: {' '.join((out.stderr or out.stdout).split())[-400:]})",
        )


def check_services(m, report):
    for svc in m.all("Service"):
        report.scope = f"Service/{svc['metadata']['name']}"
        sel = svc["spec"].get("selector", {})
        pods = m.pods_selected(sel)
        report.check(len(pods) > 0, f"selector {sel} selects pods of a workload")
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            for w in pods:
                report.check(
                    port_exists(target, w["spec"]["template"]["spec"]),
                    f"targetPort {target} is a container port of {w['kind']}/{w['metadata']['name']}",
                )
        report.check(svc["spec"].get("sessionAffinity", "None") == "None", "no session affinity")


def check_statefulsets(m, report):
    for sts in m.all("StatefulSet"):
        report.scope = f"StatefulSet/{sts['metadata']['name']}"
        svc = m.get("Service", sts["spec"].get("serviceName", ""))
        if report.check(svc is not None, f"serviceName {sts['spec'].get('serviceName')} is a Service"):
            report.check(svc["spec"].get("clusterIP") == "None", "governing Service is headless")
            report.check(sts in m.pods_selected(svc["spec"].get("selector", {})), "governing Service selects its pods")


def check_nats(m, report, stream_max_bytes, stream_replicas):
    sts = m.get("StatefulSet", "nats")
    report.scope = "NATS"
    if not report.check(sts is not None, "StatefulSet nats exists"):
        return
    pod = sts["spec"]["template"]["spec"]
    c = next((c for c in pod["containers"] if c["name"] == "nats"), None)
    if not report.check(c is not None, "container nats exists"):
        return
    args = c.get("args", [])
    conf_path = args[args.index("--config") + 1] if "--config" in args else None
    report.check(conf_path is not None, "nats-server gets --config")
    mounts = {mt["mountPath"]: mt["name"] for mt in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    conf_dir, conf_file = os.path.split(conf_path or "/")
    vol = volumes.get(mounts.get(conf_dir, ""), {})
    cm = m.get("ConfigMap", vol.get("configMap", {}).get("name", ""))
    if not report.check(cm is not None and conf_file in cm.get("data", {}), f"{conf_path} comes from a ConfigMap"):
        return
    conf = parse_nats_conf(cm["data"][conf_file])
    ports, _ = container_ports(pod)
    replicas = sts["spec"].get("replicas", 1)
    headless = sts["spec"]["serviceName"]
    routes = conf["cluster.routes"]
    report.check(len(routes) == replicas, f"{len(routes)} routes for {replicas} replicas")
    expected = {f"{sts['metadata']['name']}-{i}.{headless}" for i in range(replicas)}
    hosts = set()
    for r in routes:
        mm = re.fullmatch(r"nats(?:-route)?://([^:/]+):(\d+)", r)
        if report.check(mm is not None, f"route {r} is nats://host:port"):
            hosts.add(mm.group(1))
            report.check(int(mm.group(2)) == ports.get("cluster"), f"route {r} uses the cluster port {ports.get('cluster')}")
    report.check(hosts == expected, f"routes name every pod through {headless}: {sorted(hosts)} vs {sorted(expected)}")
    svc = m.get("Service", headless)
    if report.check(svc is not None, f"headless Service {headless} exists"):
        report.check(svc["spec"].get("publishNotReadyAddresses") is True, "headless Service publishes not-ready pods (a cluster must form before it is ready)")
        report.check(any(p.get("targetPort") in ("cluster", ports.get("cluster")) for p in svc["spec"]["ports"]), "headless Service carries the cluster port")
    report.check(int(conf.get("cluster.port", 0)) == ports.get("cluster"), "cluster.port is the container's cluster port")
    report.check(int(conf.get("port", 4222)) == ports.get("nats"), "port is the container's nats port")
    report.check(int(conf.get("http_port", conf.get("http", "0").rsplit(":", 1)[-1])) == ports.get("monitor"), "http_port is the container's monitor port")
    # JetStream on per-pod volumes.
    store = conf.get("jetstream.store_dir", "")
    claim_templates = {t["metadata"]["name"]: t for t in sts["spec"].get("volumeClaimTemplates", [])}
    report.check(mounts.get(store) in claim_templates, f"jetstream.store_dir {store} is a volumeClaimTemplate mount")
    tmpl = claim_templates.get(mounts.get(store))
    if tmpl:
        pvc_size = parse_size(tmpl["spec"]["resources"]["requests"]["storage"])
        max_file = parse_size(conf.get("jetstream.max_file_store", "0"))
        report.check(max_file and max_file <= pvc_size, f"max_file_store {conf.get('jetstream.max_file_store')} fits the volume")
        if stream_max_bytes is not None:
            report.check(max_file and stream_max_bytes < max_file, "NATTER_STREAM_MAX_BYTES fits in max_file_store")
    if stream_replicas is not None:
        report.check(stream_replicas <= replicas, f"NATTER_STREAM_REPLICAS {stream_replicas} <= NATS replicas {replicas}")
    # Lame duck: preStop signals the pid file nats-server writes; the grace period covers it.
    pid_file = conf.get("pid_file", "")
    pre = " ".join(c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
    report.check("ldm" in pre and pid_file and pid_file in pre, "preStop puts the server in lame duck mode through its pid file")
    report.check(os.path.dirname(pid_file) in mounts, "the pid file's directory is a writable volume")
    lame = (parse_duration(conf.get("lame_duck_grace_period", "10s")) or 0) + (parse_duration(conf.get("lame_duck_duration", "120s")) or 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    report.check(grace >= lame + EXIT_MARGIN, f"terminationGracePeriodSeconds {grace} covers lame duck ({lame:.0f}s)")
    server_name = conf.get("server_name", "")
    report.check(server_name.startswith("$"), "server_name comes from the pod name")


def check_hpa_pdb_ingress(m, report):
    for hpa in m.all("HorizontalPodAutoscaler"):
        report.scope = f"HorizontalPodAutoscaler/{hpa['metadata']['name']}"
        ref = hpa["spec"]["scaleTargetRef"]
        target = m.get(ref["kind"], ref["name"])
        if report.check(target is not None, f"scaleTargetRef {ref['kind']}/{ref['name']} exists"):
            report.check(hpa["spec"].get("minReplicas", 1) >= 2, "minReplicas >= 2")
            for metric in hpa["spec"].get("metrics", []):
                if metric["type"] == "Resource":
                    r = metric["resource"]["name"]
                    report.check(
                        all(r in c.get("resources", {}).get("requests", {}) for c in target["spec"]["template"]["spec"]["containers"]),
                        f"every container requests {r} (utilization needs it)",
                    )
    for pdb in m.all("PodDisruptionBudget"):
        report.scope = f"PodDisruptionBudget/{pdb['metadata']['name']}"
        pods = m.pods_selected(pdb["spec"].get("selector", {}).get("matchLabels", {}))
        report.check(len(pods) > 0, "selector selects pods of a workload")
        for w in pods:
            mu = pdb["spec"].get("maxUnavailable")
            if isinstance(mu, int):
                report.check(mu < max(w["spec"].get("replicas", 1), 2), f"maxUnavailable {mu} leaves {w['metadata']['name']} running")
    for ing in m.all("Ingress"):
        report.scope = f"Ingress/{ing['metadata']['name']}"
        ann = ing["metadata"].get("annotations", {})
        report.check(not any(a.startswith(AFFINITY_ANNOTATIONS) for a in ann), "no affinity annotations")
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                b = p["backend"]["service"]
                svc = m.get("Service", b["name"])
                if report.check(svc is not None, f"{p['path']}: Service {b['name']} exists"):
                    port = b["port"].get("name", b["port"].get("number"))
                    report.check(
                        any(sp.get("name") == port or sp["port"] == port for sp in svc["spec"]["ports"]),
                        f"{p['path']}: Service {b['name']} has port {port}",
                    )
                if p["path"] == "/chat":
                    for a in ("proxy-read-timeout", "proxy-send-timeout"):
                        v = ann.get(f"nginx.ingress.kubernetes.io/{a}", "60")
                        report.check(v.isdigit() and int(v) >= WS_TIMEOUT_MIN, f"/chat {a} {v} >= {WS_TIMEOUT_MIN}s for idle sockets")
    report.scope = "Ingress"
    paths = {p["path"] for i in m.all("Ingress") for r in i["spec"].get("rules", []) for p in r.get("http", {}).get("paths", [])}
    for want in ("/chat", "/images", "/files"):
        report.check(want in paths, f"an Ingress routes {want}")


def check_shared_config(m, report):
    report.scope = "natter-config"
    cms = [cm for cm in m.all("ConfigMap") if cm["metadata"]["name"].startswith(SHARED_CONFIGMAP)]
    if not report.check(len(cms) == 1, f"exactly one {SHARED_CONFIGMAP} ConfigMap"):
        return None, None
    data = cms[0].get("data", {})
    for k in SHARED_KEYS:
        report.check(k in data, f"holds {k}")
    def num(k):
        v = data.get(k, "")
        return int(v) if v.isdigit() else None
    return num("NATTER_STREAM_MAX_BYTES"), num("NATTER_STREAM_REPLICAS")


def check_all(docs, bin_dir, quiet=False):
    m = Manifests(docs)
    report = Report(quiet)
    report.scope = "objects"
    for d in m.docs:
        report.check(d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "natter" or d["kind"] == "Namespace",
                     f"{d['kind']}/{d['metadata']['name']} is labelled part-of natter")
    for kind, name in [("Deployment", "edge"), ("Deployment", "archiver"), ("Deployment", "filestore"), ("StatefulSet", "nats"), ("StatefulSet", "postgres")]:
        report.check(m.get(kind, name) is not None, f"{kind}/{name} exists")
    edge = m.get("Deployment", "edge")
    if edge:
        report.scope = "Deployment/edge"
        hpas = [h for h in m.all("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == "edge"]
        if report.check(len(hpas) == 1, "edge has an HPA"):
            # With an HPA the Deployment must not set replicas: every `kubectl apply` would
            # reset the count the HPA chose (and drain the edges above it).
            report.check("replicas" not in edge["spec"], "edge leaves replicas to its HPA")
            report.check(hpas[0]["spec"].get("minReplicas", 1) >= 2, "edge runs at least 2 replicas (HPA minReplicas)")
        report.check(len(m.pods_selected({"app.kubernetes.io/name": "edge"})) == 1 and any(
            m.pods_selected(p["spec"]["selector"].get("matchLabels", {})) == [edge] for p in m.all("PodDisruptionBudget")), "edge has a PDB")
        report.check(edge["spec"]["template"]["spec"].get("topologySpreadConstraints"), "edges spread over nodes")
        c = edge["spec"]["template"]["spec"]["containers"][0]
        report.check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "edge readiness is /readyz")
    archiver = m.get("Deployment", "archiver")
    if archiver:
        report.scope = "Deployment/archiver"
        report.check(archiver["spec"].get("replicas", 1) >= 2, "2 archivers share the durable consumer")
    stream_max_bytes, stream_replicas = check_shared_config(m, report)
    check_workload_pods(m, report, bin_dir)
    check_services(m, report)
    check_statefulsets(m, report)
    check_nats(m, report, stream_max_bytes, stream_replicas)
    check_hpa_pdb_ingress(m, report)
    check_network_policies(m, report)
    return report


def check_build_files(report, dockerfile, okteto, rendered_okteto):
    """The Dockerfile has a from-source and a prebuilt target per service; okteto.yml builds
    the from-source ones and its deploy step replaces exactly the images the okteto overlay
    renders."""
    report.scope = "Dockerfile"
    with open(dockerfile) as f:
        stages = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$", f.read()))
    for svc in SERVICES:
        report.check(svc in stages, f"target {svc} exists")
        report.check(f"{svc}-prebuilt" in stages, f"target {svc}-prebuilt exists")
    report.scope = "okteto.yml"
    with open(okteto) as f:
        manifest = yaml.safe_load(f)
    build = manifest.get("build", {})
    commands = "\n".join(c["command"] if isinstance(c, dict) else c for c in manifest.get("deploy", []))
    with open(rendered_okteto) as f:
        images = {c["image"] for d in yaml.safe_load_all(f) if d and d["kind"] in ("Deployment", "StatefulSet")
                  for c in d["spec"]["template"]["spec"]["containers"]}
    for svc in SERVICES:
        b = build.get(svc, {})
        report.check(b.get("target") in stages, f"build.{svc}.target {b.get('target')} is a Dockerfile stage")
        placeholder = f"image: natter-{svc}:okteto"
        report.check(f"natter-{svc}:okteto" in images, f"the okteto overlay runs natter-{svc}:okteto")
        report.check(placeholder in commands and f"OKTETO_BUILD_{svc.upper()}_IMAGE" in commands,
                     f"deploy replaces {placeholder} with OKTETO_BUILD_{svc.upper()}_IMAGE")


# ---------------------------------------------------------------- self-test: break it on purpose

def _obj(docs, kind, name):
    return next(d for d in docs if d and d["kind"] == kind and d["metadata"]["name"].startswith(name))


def _container(docs, kind, name):
    return _obj(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def _env(c, name, value):
    for e in c.setdefault("env", []):
        if e["name"] == name:
            e.clear()
            e.update({"name": name, "value": value})
            return
    c["env"].append({"name": name, "value": value})


def _drop_route(docs):
    cm = _obj(docs, "ConfigMap", "nats-config")
    cm["data"]["nats.conf"] = re.sub(r"\n\s*nats://nats-2\.nats-headless:6222", "", cm["data"]["nats.conf"])


def _set_shared(docs, key, value):
    _obj(docs, "ConfigMap", SHARED_CONFIGMAP)["data"][key] = value


BREAKAGES = [
    ("edge Service selects no pod", lambda d: _obj(d, "Service", "edge")["spec"]["selector"].update({"app.kubernetes.io/name": "edges"}), "selects pods"),
    ("targetPort is not a container port", lambda d: _obj(d, "Service", "filestore")["spec"]["ports"][0].update({"targetPort": "web"}), "targetPort"),
    ("edge grace period shorter than drain + preStop", lambda d: _obj(d, "Deployment", "edge")["spec"]["template"]["spec"].update({"terminationGracePeriodSeconds": 20}), "terminationGracePeriodSeconds"),
    ("drain longer than the grace period", lambda d: _set_shared(d, "NATTER_DRAIN_TIMEOUT_SECS", "60"), "NATTER_DRAIN_TIMEOUT_SECS"),
    ("a NATS route missing", _drop_route, "routes"),
    ("NATS replicas without routes", lambda d: _obj(d, "StatefulSet", "nats")["spec"].update({"replicas": 5}), "routes"),
    ("shared ConfigMap missing", lambda d: d.remove(_obj(d, "ConfigMap", SHARED_CONFIGMAP)), "ConfigMap"),
    ("Secret key missing", lambda d: _obj(d, "Secret", "postgres")["data"].clear(), "Secret postgres"),
    ("PVC missing", lambda d: d.remove(_obj(d, "PersistentVolumeClaim", "filestore-data")), "PVC"),
    ("replicas fixed under an HPA", lambda d: _obj(d, "Deployment", "edge")["spec"].update({"replicas": 2}), "leaves replicas to its HPA"),
    ("HPA target missing", lambda d: _obj(d, "HorizontalPodAutoscaler", "edge")["spec"]["scaleTargetRef"].update({"name": "edges"}), "scaleTargetRef"),
    ("PDB selects nothing", lambda d: _obj(d, "PodDisruptionBudget", "archiver")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"}), "selects pods"),
    ("ingress to a missing Service port", lambda d: _obj(d, "Ingress", "filestore")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"].update({"name": "web"}), "has port"),
    ("sticky sessions", lambda d: _obj(d, "Ingress", "edge")["metadata"]["annotations"].update({"nginx.ingress.kubernetes.io/affinity": "cookie"}), "affinity"),
    ("short WebSocket timeout", lambda d: _obj(d, "Ingress", "edge")["metadata"]["annotations"].update({"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"}), "proxy-read-timeout"),
    ("writable root file system", lambda d: _container(d, "Deployment", "archiver")["securityContext"].update({"readOnlyRootFilesystem": False}), "readOnlyRootFilesystem"),
    ("scrape port not a container port", lambda d: _obj(d, "Deployment", "edge")["spec"]["template"]["metadata"]["annotations"].update({"prometheus.io/port": "9090"}), "prometheus.io/port"),
    ("stream setting overridden in one pod", lambda d: _env(_container(d, "Deployment", "filestore"), "NATTER_STREAM_REPLICAS", "1"), "comes from ConfigMap"),
    ("misspelt environment variable", lambda d: _env(_container(d, "Deployment", "edge"), "NATTER_MAX_CONECTIONS", "10"), "reads environment variable"),
    ("unknown flag", lambda d: _container(d, "Deployment", "archiver").update({"args": ["--batch-sise", "10"]}), "knows flag"),
    ("a value the binary refuses", lambda d: _env(_container(d, "Deployment", "edge"), "NATTER_MAX_CONNECTIONS", "many"), "--check-config"),
    ("a NetworkPolicy shutting the archiver out of Postgres", lambda d: _obj(d, "NetworkPolicy", "postgres")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].update({"app.kubernetes.io/name": "archivers"}), "let archiver pods reach"),
    ("a NetworkPolicy closing the NATS route port", lambda d: _obj(d, "NetworkPolicy", "nats")["spec"]["ingress"].pop(1), "cluster port"),
    ("probes on the public port", lambda d: _container(d, "Deployment", "filestore")["readinessProbe"]["httpGet"].update({"port": "http"}), "operations address"),
    ("the token key not mounted", lambda d: _container(d, "Deployment", "edge").pop("volumeMounts"), "--check-config"),
    ("stream larger than JetStream's store", lambda d: _set_shared(d, "NATTER_STREAM_MAX_BYTES", str(20 * 1024**3)), "max_file_store"),
    ("NATS_URL to a missing Service", lambda d: _set_shared(d, "NATS_URL", "nats://nats-client:4222"), "NATS_URL"),
]


def self_test(docs, bin_dir):
    passed, failed = 0, 0
    base = check_all(copy.deepcopy(docs), bin_dir, quiet=True)
    if base.failures:
        print("self-test: FAIL the unbroken manifests do not pass:\n  " + "\n  ".join(base.failures))
        failed += 1
    else:
        print(f"self-test: ok   unbroken manifests pass ({base.passed} checks)")
        passed += 1
    for what, breaker, expect in BREAKAGES:
        broken = copy.deepcopy(docs)
        breaker(broken)
        r = check_all(broken, bin_dir, quiet=True)
        caught = [f for f in r.failures if expect in f and f not in base.failures]
        if caught:
            print(f"self-test: ok   {what}: {caught[0]}")
            passed += 1
        else:
            print(f"self-test: FAIL {what}: not caught (failures: {r.failures or 'none'})")
            failed += 1
    return passed, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, help="directory holding natter-edge, natter-archiver, natter-filestore")
    ap.add_argument("--self-test", action="store_true", help="prove that broken copies of the manifests fail")
    ap.add_argument("--build-files", nargs=3, metavar=("DOCKERFILE", "OKTETO_YML", "RENDERED_OKTETO"),
                    help="also check the Dockerfile targets and okteto.yml against the rendered okteto overlay")
    ap.add_argument("rendered", nargs="+", help="rendered manifests (kubectl kustomize output)")
    a = ap.parse_args()
    passed, failed = 0, 0
    for path in a.rendered:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if a.self_test:
            p, fl = self_test(docs, a.bin_dir)
            passed, failed = passed + p, failed + fl
        else:
            r = check_all(docs, a.bin_dir)
            print(f"{path}: {r.passed} checks passed, {len(r.failures)} failed")
            passed, failed = passed + r.passed, failed + len(r.failures)
    if a.build_files:
        r = Report()
        check_build_files(r, *a.build_files)
        print(f"build files: {r.passed} checks passed, {len(r.failures)} failed")
        passed, failed = passed + r.passed, failed + len(r.failures)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

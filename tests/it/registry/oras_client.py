"""A stand-in for the oras CLI in the registry tests (tests/it/registry/referrers.rs).

The oras CLI (oras-go) is not packaged for Debian, so the referrers interop tests drive
oras-py (PyPI ``oras``, 0.2.43, in a venv that .ci/run creates: ``python3 -m venv
target/oras-venv && target/oras-venv/bin/pip install oras==0.2.43``) through this small CLI,
which does what the oras CLI's commands of the same names do. Each subcommand prints one
JSON document on stdout; errors go to stderr with exit status 1.

What is oras-py's and what is ours:

- ``push-files`` and ``pull-files`` are oras-py's ``Registry.push`` and ``Registry.pull``
  unchanged (files become titled layers; the manifest's config is oras-py's, optionally with
  ``--config-media-type``).
- ``attach`` pushes the artifact with oras-py's ``Registry.push`` (files, annotations and
  ``subject=oras.oci.Subject(...)`` are oras-py's). oras-py 0.2.43 cannot set a manifest's
  ``artifactType`` nor push by digest alone, so ours are: the ``artifactType`` field and the
  empty config descriptor (``application/vnd.oci.empty.v1+json``) that the oras CLI's
  default (image-spec v1.1) writes, added in ``upload_manifest``; with ``--image-spec v1.0``
  the artifact type is the config's media type instead, as oras writes for registries that
  refuse the field. The manifest goes under a tag derived from its content (oras-py pushes
  only to a tag). Then, as oras-go does when the registry's PUT answer carries no
  ``OCI-Subject`` header (distribution 2.8 has no referrers API), ours: read the subject's
  tag-schema index ``<alg>-<hex>``, add the artifact's descriptor (media type, digest, size,
  artifactType, annotations) unless listed, and put the index back under that tag. oras-go
  would then delete the index it replaced; this does not.
- ``discover`` is ours, over oras-py's HTTP session (``Registry.do_request``): ``GET
  /v2/<repo>/referrers/<digest>`` (``?artifactType=`` when asked; follows ``Link: <...>;
  rel="next"``; filters the entries itself unless every page says ``OCI-Filters-Applied:
  artifactType``), and on a 404 the tag-schema index ``<alg>-<hex>``, as oras-go does.

Loopback registries are spoken to over plain HTTP (``insecure=True``).
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.parse

import oras.container
import oras.defaults
import oras.oci
import oras.provider

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
ACCEPT = ", ".join(
    [
        MANIFEST,
        INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class Fail(Exception):
    pass


class Client(oras.provider.Registry):
    """oras-py's registry client; ``artifact_type`` (ours) is written into the next manifest
    it uploads, with the empty config descriptor, as the oras CLI writes an artifact."""

    artifact_type = None

    def upload_manifest(self, manifest, container):
        if self.artifact_type is not None:
            manifest["artifactType"] = self.artifact_type
            manifest["config"] = {
                "mediaType": EMPTY,
                "digest": oras.defaults.blank_config_hash,
                "size": 2,
            }
        return super().upload_manifest(manifest, container)


def client():
    return Client(insecure=True, tls_verify=False)


def split(ref):
    """``host/repo[:tag][@digest]`` -> (container, reference)."""
    container = oras.container.Container(ref)
    return container, container.digest or container.tag or "latest"


def base(container):
    return f"http://{container.registry}/v2/{container.api_prefix}"


def check(resp, what):
    if resp.status_code >= 300:
        raise Fail(f"{what}: {resp.status_code} {resp.text[:500]}")
    return resp


def get_manifest(c, container, reference, accept=ACCEPT):
    """The manifest ``reference`` names: (bytes, media type, digest), or None on a 404."""
    resp = c.do_request(
        f"{base(container)}/manifests/{reference}", "GET", headers={"Accept": accept}
    )
    if resp.status_code == 404:
        return None
    check(resp, f"GET manifest {reference}")
    body = resp.content
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if not media_type:
        media_type = json.loads(body).get("mediaType", MANIFEST)
    return body, media_type, "sha256:" + hashlib.sha256(body).hexdigest()


def fallback_tag(digest):
    alg, hexpart = digest.split(":", 1)
    return f"{alg}-{hexpart}"[:128]


def descriptor_of(body, media_type, digest):
    """A manifest as an entry of a referrers index: oras-go's descriptor of a referrer."""
    doc = json.loads(body)
    d = {"mediaType": media_type, "digest": digest, "size": len(body)}
    artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
    if artifact_type:
        d["artifactType"] = artifact_type
    if doc.get("annotations"):
        d["annotations"] = doc["annotations"]
    return d


def add_to_tag_index(c, container, subject, entry):
    """Adds ``entry`` to the tag-schema index of ``subject`` (read, add, put), as oras-go
    does for a registry without the referrers API. Returns whether it wrote."""
    tag = fallback_tag(subject)
    current = get_manifest(c, container, tag, accept=INDEX)
    if current is None:
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
    else:
        index = json.loads(current[0])
        index.setdefault("manifests", [])
    if any(m.get("digest") == entry["digest"] for m in index["manifests"]):
        return False
    index["manifests"].append(entry)
    body = json.dumps(index, separators=(",", ":")).encode()
    resp = c.do_request(
        f"{base(container)}/manifests/{tag}",
        "PUT",
        data=body,
        headers={"Content-Type": INDEX},
    )
    check(resp, f"PUT referrers index {tag}")
    return True


def annotations(pairs):
    out = {}
    for kv in pairs or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise Fail(f"--annotation {kv!r}: not KEY=VALUE")
        out[k] = v
    return out


def empty_config(tmp, media_type):
    """A file holding ``{}`` and oras-py's ``path:mediatype`` for it."""
    path = os.path.join(tmp, "config.json")
    with open(path, "w") as f:
        f.write("{}")
    return f"{path}:{media_type}"


def cmd_attach(args):
    c = client()
    container, reference = split(args.subject)
    found = get_manifest(c, container, reference)
    if found is None:
        raise Fail(f"subject {args.subject} not found")
    body, media_type, subject = found
    annots = annotations(args.annotation)
    seed = json.dumps([subject, args.artifact_type, args.files, annots, args.image_spec])
    tag = "attached-" + hashlib.sha256(seed.encode()).hexdigest()[:16]
    target = f"{container.registry}/{container.api_prefix}:{tag}"
    with tempfile.TemporaryDirectory() as tmp:
        if args.image_spec == "v1.1":
            c.artifact_type = args.artifact_type
            config = empty_config(tmp, EMPTY)
        else:
            config = empty_config(tmp, args.artifact_type)
        resp = c.push(
            target,
            files=args.files,
            manifest_config=config,
            manifest_annotations=annots or None,
            subject=oras.oci.Subject(mediaType=media_type, digest=subject, size=len(body)),
            disable_path_validation=True,
            quiet=True,
        )
    check(resp, f"push {target}")
    acknowledged = resp.headers.get("OCI-Subject")
    pushed = get_manifest(c, container, tag)
    if pushed is None:
        raise Fail(f"{target} is not there after the push")
    mbody, mtype, digest = pushed
    entry = descriptor_of(mbody, mtype, digest)
    wrote = False
    if acknowledged != subject:
        wrote = add_to_tag_index(c, container, subject, entry)
    out = dict(entry)
    out.update({"subject": subject, "tag": tag, "tag_index_written": wrote})
    return out


def referrers_api(c, container, subject, artifact_type):
    """Every page of the referrers API: (entries, filtered), or None on a 404."""
    url = f"{base(container)}/referrers/{subject}"
    if artifact_type:
        url += "?artifactType=" + urllib.parse.quote(artifact_type, safe="")
    entries, filtered, first = [], True, True
    while url:
        resp = c.do_request(url, "GET", headers={"Accept": INDEX})
        if resp.status_code == 404 and first:
            return None
        check(resp, f"GET {url}")
        first = False
        applied = resp.headers.get("OCI-Filters-Applied", "")
        filtered &= "artifacttype" in [f.strip().lower() for f in applied.split(",")]
        entries += resp.json().get("manifests") or []
        nxt = resp.links.get("next", {}).get("url")
        url = urllib.parse.urljoin(url, nxt) if nxt else None
    return entries, filtered


def cmd_discover(args):
    c = client()
    container, reference = split(args.reference)
    if reference.startswith("sha256:"):
        subject = reference
    else:
        found = get_manifest(c, container, reference)
        if found is None:
            raise Fail(f"{args.reference} not found")
        subject = found[2]
    api = referrers_api(c, container, subject, args.artifact_type)
    if api is not None:
        entries, filtered = api
        source = "referrers-api"
    else:
        source, filtered = "tag-schema", False
        index = get_manifest(c, container, fallback_tag(subject), accept=INDEX)
        entries = (json.loads(index[0]).get("manifests") or []) if index else []
    if args.artifact_type and not filtered:
        entries = [e for e in entries if e.get("artifactType") == args.artifact_type]
    return {"subject": subject, "source": source, "manifests": entries}


def cmd_push_files(args):
    c = client()
    with tempfile.TemporaryDirectory() as tmp:
        config = empty_config(tmp, args.config_media_type) if args.config_media_type else None
        resp = c.push(
            args.target,
            files=args.files,
            manifest_config=config,
            manifest_annotations=annotations(args.annotation) or None,
            disable_path_validation=True,
            quiet=True,
        )
    check(resp, f"push {args.target}")
    container, reference = split(args.target)
    body, media_type, digest = get_manifest(c, container, reference)
    return {"digest": digest, "mediaType": media_type, "size": len(body)}


def cmd_pull_files(args):
    files = client().pull(target=args.reference, outdir=args.output)
    return {"files": sorted(os.path.relpath(f, args.output) for f in files)}


def main():
    p = argparse.ArgumentParser(prog="oras_client.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attach", help="push an artifact that refers to SUBJECT")
    a.add_argument("--artifact-type", required=True)
    a.add_argument("--annotation", action="append", metavar="K=V")
    a.add_argument("--image-spec", choices=["v1.1", "v1.0"], default="v1.1")
    a.add_argument("subject", metavar="SUBJECT")
    a.add_argument("files", nargs="+", metavar="FILE[:MEDIATYPE]")
    a.set_defaults(run=cmd_attach)
    d = sub.add_parser("discover", help="list the referrers of REFERENCE")
    d.add_argument("--artifact-type")
    d.add_argument("reference")
    d.set_defaults(run=cmd_discover)
    u = sub.add_parser("push-files", help="oras-py push")
    u.add_argument("--config-media-type")
    u.add_argument("--annotation", action="append", metavar="K=V")
    u.add_argument("target")
    u.add_argument("files", nargs="+", metavar="FILE[:MEDIATYPE]")
    u.set_defaults(run=cmd_push_files)
    g = sub.add_parser("pull-files", help="oras-py pull")
    g.add_argument("-o", "--output", required=True)
    g.add_argument("reference")
    g.set_defaults(run=cmd_pull_files)
    args = p.parse_args()
    try:
        out = args.run(args)
    except Exception as e:  # noqa: BLE001 - one line for the test's message
        print(f"oras_client.py {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

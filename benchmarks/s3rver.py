"""A disk-backed S3 server for the full-height `--s3` run: s3rver, from the npm registry.

moto's server, which the live tests use, assembles a completed multipart upload as one
`bytes` object (`FakeMultipart.complete`: the parts joined, then copied), so a 13.46 GB
level-0 file would need about 27 GB of memory. s3rver 3.7.1 keeps objects and parts as
files and streams the assembly, the copies and the reads (measured on a 3 GiB object:
106 MiB of server memory, byte-identical on the way back). It lacks two calls that s3fs
makes on large objects, and one of its listings is wrong, so `install` changes it, in the
scratch copy only:

- UploadPartCopy: s3fs copies an object over 150 MiB part by part (`copy` of the
  publication's finished upload to its final key; real S3 allows a plain CopyObject only
  up to 5 GB);
- AbortMultipartUpload: s3fs's clean-up after a failed upload;
- a listing with a delimiter left out a common prefix whose objects all lie two levels or
  more below it (`out/dicom/` of `out/dicom/<slide>/sm/*.dcm`), so s3fs found no `dicom`
  folder and the job's validation no DICOM files.

s3rver finishes a multipart upload inside the request (13 GB: about a minute, with no
keep-alive bytes as AWS sends), so the client is given a long read timeout (`env`); and it
encrypts its listing tokens with DES, which Node 20 has only with OpenSSL's legacy
provider.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bms_pipeline_tests.live.services import free_port, port_open, wait_for

S3RVER_VERSION = "3.7.1"
READ_TIMEOUT_S = 900
BUCKET = "bench"
S3RVER_KEYS = {
    "AWS_ACCESS_KEY_ID": "S3RVER",  # the one account s3rver knows
    "AWS_SECRET_ACCESS_KEY": "S3RVER",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_PATCHED = "// bms-pipeline benchmark: UploadPartCopy and AbortMultipartUpload"

_ROUTE_PART_COPY = (
    """        if ('x-amz-copy-source' in ctx.headers) {
          throw new S3Error(
            'NotImplemented',
            'A header you provided implies functionality that is not implemented',
          );
        }
        return objectCtrl.uploadPart(ctx);""",
    """        if ('x-amz-copy-source' in ctx.headers) {
          return objectCtrl.uploadPartCopy(ctx);
        }
        return objectCtrl.uploadPart(ctx);""",
)
_ROUTE_ABORT = (
    """      case undefined:
        return objectCtrl.deleteObject(ctx);
      case 'tagging':""",
    """      case undefined:
        return objectCtrl.deleteObject(ctx);
      case 'uploadId':
        return objectCtrl.abortMultipartUpload(ctx);
      case 'tagging':""",
)
_CONTROLLERS = """
// UploadPartCopy: a byte range of a stored object, streamed from its file into a part.
exports.uploadPartCopy = async function uploadPartCopy(ctx) {
  let source = decodeURI(ctx.headers['x-amz-copy-source']);
  source = source.startsWith('/') ? source.slice(1) : source;
  const [sourceBucket, ...keyParts] = source.split('/');
  const sourceKey = keyParts.join('/').split('?versionId=')[0];
  const options = {};
  const range = /^bytes=(\\d+)-(\\d+)$/.exec(ctx.headers['x-amz-copy-source-range'] || '');
  if (range) {
    options.start = Number(range[1]);
    options.end = Number(range[2]);
  }
  const object = await ctx.store.getObject(sourceBucket, sourceKey, options);
  if (!object || !object.content) {
    throw new S3Error('NoSuchKey', 'The specified key does not exist.', { Key: sourceKey });
  }
  const { md5 } = await ctx.store.putPart(
    ctx.params.bucket, ctx.query.uploadId, ctx.query.partNumber, object.content);
  ctx.body = {
    CopyPartResult: { LastModified: new Date().toISOString(), ETag: JSON.stringify(md5) },
  };
};

exports.abortMultipartUpload = async function abortMultipartUpload(ctx) {
  await ctx.store.abortUpload(ctx.params.bucket, ctx.query.uploadId);
  ctx.status = 204;
};
"""
_STORE_ANCHOR = "  async getSubresource(bucket, key, resourceType) {"
_STORE_LISTING = (
    """        if (
          delimiterEnc &&
          dirPath.slice(prefixPath.length).indexOf(delimiterEnc) !== -1
        ) {
          // avoid directories occurring beneath a common prefix
          return false;
        }
""",
    """        // (walked: a common prefix whose objects all lie two levels or more below it
        // was left out of the listing)
""",
)
_STORE_ABORT = """  async abortUpload(bucket, uploadId) {
    await fs.remove(path.join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId));
  }

"""


def install(folder: Path) -> Path:
    """s3rver in `folder` (npm, pinned, once), with the calls added and the listing fixed;
    its CLI. Each file is patched on its own, so an interrupted install is finished by the
    next one."""
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / "node_modules" / "s3rver" / "lib"
    if not (lib / "controllers" / "object.js").exists():
        (folder / "package.json").write_text('{"private": true}\n')
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", f"s3rver@{S3RVER_VERSION}"],
            cwd=folder,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    _patch(lib / "routes.js", [_ROUTE_PART_COPY, _ROUTE_ABORT])
    _patch(
        lib / "stores" / "filesystem.js",
        [_STORE_LISTING, (_STORE_ANCHOR, _STORE_ABORT + _STORE_ANCHOR)],
    )
    controllers = lib / "controllers" / "object.js"
    text = controllers.read_text()
    if _PATCHED not in text:
        controllers.write_text(text + f"\n{_PATCHED}\n{_CONTROLLERS}")
    return folder / "node_modules" / ".bin" / "s3rver"


def _patch(path: Path, edits: list[tuple[str, str]]) -> None:
    """Apply `edits` (old, new) to `path` unless each new text is there already."""
    text = path.read_text()
    for old, new in edits:
        if new in text:
            continue
        if old not in text:
            raise RuntimeError(f"{path}: not the s3rver {S3RVER_VERSION} this expects")
        text = text.replace(old, new)
    path.write_text(text)


class S3rver:
    """A running s3rver: its endpoint, the process and what a client needs."""

    def __init__(self, endpoint: str, process: subprocess.Popen[bytes], store: Path) -> None:
        self.endpoint = endpoint
        self.process = process
        self.store = store

    def env(self) -> dict[str, str]:
        """s3fs/botocore's settings for this server, with the long read timeout."""
        config = {"endpoint_url": self.endpoint, "config_kwargs": {"read_timeout": READ_TIMEOUT_S}}
        return {
            **S3RVER_KEYS,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "FSSPEC_S3": json.dumps(config),
        }

    def filesystem(self):  # noqa: ANN201 - s3fs is untyped
        import s3fs

        return s3fs.S3FileSystem(
            key=S3RVER_KEYS["AWS_ACCESS_KEY_ID"],
            secret=S3RVER_KEYS["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            config_kwargs={"read_timeout": READ_TIMEOUT_S},
        )

    def new_bucket(self) -> str:
        return BUCKET


@contextlib.contextmanager
def s3rver_server(install_folder: Path, store: Path, log: Path) -> Iterator[S3rver]:
    """s3rver (installed once in `install_folder`) on a free port, its objects under `store`
    (removed afterwards, the server stopped whatever happens)."""
    cli = install(install_folder)
    store.mkdir(parents=True, exist_ok=True)
    port = free_port()
    try:
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [
                    str(cli),
                    "--directory",
                    str(store),
                    "--address",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--configure-bucket",  # made before it listens
                    BUCKET,
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                # Its listing continuation tokens are DES-encrypted, which OpenSSL 3 keeps in
                # its legacy provider (without it: 500 on a listing that has more keys).
                env={**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"},
            )
        try:
            wait_for(lambda: port_open("127.0.0.1", port), 60, "s3rver to listen")
            yield S3rver(f"http://127.0.0.1:{port}", process, store)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(store, ignore_errors=True)

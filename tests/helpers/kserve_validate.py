"""Run by the kserve SDK's own Python (a separate venv: kserve needs protobuf < 7): load an InferenceService YAML
into ``kserve.V1beta1InferenceService`` through the models' own ``openapi_types``/``attribute_map`` (the schema the
SDK was generated from), serialize it back with the Kubernetes client, and print both as JSON. A field the schema
does not know is dropped by the round trip, so "nothing lost" is equality of the two."""
import datetime
import json
import re
import sys

import kserve
import kubernetes.client
import yaml

PRIMITIVES = {"str": str, "int": int, "float": float, "bool": bool, "object": object, "date": datetime.date,
              "datetime": datetime.datetime}


def model_class(name):
    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise SystemExit(f"unknown model type {name}")


def load(data, kind):
    if data is None:
        return None
    m = re.fullmatch(r"(?:list|List)\[(.+)\]", kind)
    if m:
        return [load(x, m.group(1)) for x in data]
    m = re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", kind)
    if m:
        return {k: load(v, m.group(1) or m.group(2)) for k, v in data.items()}
    if kind in PRIMITIVES:
        return data
    cls = model_class(kind)
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    if unknown:
        print(f"{kind} has no field(s) {', '.join(unknown)}", file=sys.stderr)
    kwargs = {by_json[k]: load(v, cls.openapi_types[by_json[k]]) for k, v in data.items() if k in by_json}
    return cls(**kwargs)


def dump(obj):
    """The model back to JSON names (its attribute_map), unset fields left out, as the API server stores it."""
    if isinstance(obj, list):
        return [dump(x) for x in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    if hasattr(obj, "openapi_types"):
        return {obj.attribute_map[a]: dump(getattr(obj, a)) for a in obj.openapi_types if getattr(obj, a) is not None}
    return obj


doc = yaml.safe_load(open(sys.argv[1]))
isvc = load(doc, "V1beta1InferenceService")
assert isinstance(isvc, kserve.V1beta1InferenceService)
print(json.dumps({"in": doc, "back": dump(isvc)}))

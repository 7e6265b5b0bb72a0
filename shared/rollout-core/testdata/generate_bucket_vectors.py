#!/usr/bin/env python3
"""Regenerates bucket_vectors.json from an independent implementation of the documented
bucketing algorithm (Python `xxhash`, not the Rust code under test):

    seed   = XXH3-64(utf8(salt))
    bucket = XXH3-64-with-seed(utf8(key), seed) mod 1_000_000

Run: pip install xxhash && python3 generate_bucket_vectors.py > bucket_vectors.json
"""
import json
import xxhash

salts = ["", "a", "rollout-1", "0f8e2c4a-salt", "new-checkout/default", "üñíçødé", "s" * 100]
keys = ["", "user-42", "user-43", "account-9000", "12345", "Ωmega", "with space", "k" * 200,
        "device:eu-west-1:0042"]

vectors = []
for salt in salts:
    seed = xxhash.xxh3_64_intdigest(salt.encode("utf-8"))
    for key in keys:
        digest = xxhash.xxh3_64_intdigest(key.encode("utf-8"), seed=seed)
        vectors.append({"salt": salt, "key": key, "bucket": digest % 1_000_000})
print(json.dumps(vectors, indent=1, ensure_ascii=False))

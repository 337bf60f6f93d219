{
  "targets": [
    {
      "target_name": "shm_map",
      "sources": ["shm_map.c"],
      "cflags": ["-O3", "-fno-fast-math", "-ffp-contract=off"]
    }
  ]
}

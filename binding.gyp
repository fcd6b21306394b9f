{
  "targets": [
    {
      "target_name": "flannel_native",
      "sources": [
        "src/native/addon.cc",
        "src/native/devices.cc",
        "src/native/forwarder.cc",
        "src/native/rx_path.cc",
        "src/native/tx_path.cc",
        "src/native/worker.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags_cc": ["-O2", "-std=c++17", "-pthread"],
      "ldflags": ["-pthread"]
    },
    {
      "target_name": "flannel_sdnotify",
      "sources": ["src/native/sdnotify.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-O2", "-std=c++17"]
    },
    {
      "target_name": "flannel_memory",
      "sources": ["src/native/memory.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-O2", "-std=c++17"]
    },
    {
      "target_name": "flannel_netlink",
      "sources": ["src/native/netlink.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags_cc": ["-O2", "-std=c++17", "-pthread"],
      "ldflags": ["-pthread"]
    },
    {
      "target_name": "flannel_cni",
      "type": "executable",
      "sources": ["src/native/cni_client.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"],
      "ldflags": ["-static", "-s"]
    }
  ]
}

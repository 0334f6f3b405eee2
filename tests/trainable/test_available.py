"""The memory a run may take under a cgroup limit, read from fake cgroup trees (v1 and v2)."""

from tune_search.trainable.available import cgroup_room


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_reads_the_tightest_limit_above_and_counts_droppable_page_cache(tmp_path):
    write(tmp_path / "self", "5:cpu:/\n4:memory:/jobs/one\n0::/\n")
    group = tmp_path / "fs" / "memory" / "jobs" / "one"
    write(group / "memory.usage_in_bytes", "1500\n")
    write(group / "memory.stat", "cache 900\nhierarchical_memory_limit 4000\ntotal_inactive_file 300\n")
    assert cgroup_room(tmp_path / "self", tmp_path / "fs") == 4000 - 1500 + 300
    write(group / "memory.stat", "hierarchical_memory_limit 9223372036854771712\n")  # unlimited, as v1 writes it
    assert cgroup_room(tmp_path / "self", tmp_path / "fs") is None


def test_v2_takes_the_smallest_memory_max_up_to_the_root(tmp_path):
    write(tmp_path / "self", "0::/outer/inner\n")
    root = tmp_path / "fs"
    write(root / "outer" / "memory.max", "3000\n")
    write(root / "outer" / "inner" / "memory.max", "max\n")
    write(root / "outer" / "inner" / "memory.current", "1000\n")
    write(root / "outer" / "inner" / "memory.stat", "anon 700\ninactive_file 200\n")
    assert cgroup_room(tmp_path / "self", root) == 3000 - 1000 + 200
    write(root / "outer" / "memory.max", "max\n")
    assert cgroup_room(tmp_path / "self", root) is None


def test_usage_over_the_limit_leaves_no_room_and_no_cgroup_file_means_no_limit(tmp_path):
    write(tmp_path / "self", "0::/a\n")
    write(tmp_path / "fs" / "a" / "memory.max", "100\n")
    write(tmp_path / "fs" / "a" / "memory.current", "500\n")
    assert cgroup_room(tmp_path / "self", tmp_path / "fs") == 0
    assert cgroup_room(tmp_path / "missing", tmp_path / "fs") is None

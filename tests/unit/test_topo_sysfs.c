/* test_topo_sysfs.c - the sysfs reader (topology/topo_sysfs.c) over a fake
 * /sys/class/infiniband tree built in a temporary directory: a DGX Spark's cabled port
 * (two twins, one with MTU 9000 and one with 1500) and an uncabled one, with GID tables
 * holding link-local, IPv4-mapped, empty and bare-prefix entries as the kernel shows
 * them; the parsed GIDs, types, netdevs, PCI addresses and the proposal made from them. */
#include "topology/topo.h"
#include "topology/topo_plan.h"

#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char root[256];

static void mkdirs(const char *rel)
{
    char path[1024];
    int n = snprintf(path, sizeof(path), "%s/%s", root, rel);
    assert_true(n > 0 && (size_t)n < sizeof(path));
    for (char *p = path + strlen(root) + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0755);
            *p = '/';
        }
    }
    mkdir(path, 0755);
}

static void put(const char *rel, const char *text)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", rel);
    char *slash = strrchr(dir, '/');
    if (slash != NULL) {
        *slash = '\0';
        mkdirs(dir);
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void port_file(const char *dev, const char *file, const char *text)
{
    char rel[512];
    snprintf(rel, sizeof(rel), "class/infiniband/%s/ports/1/%s", dev, file);
    put(rel, text);
}

static void gid_entry(const char *dev, int i, const char *gid, const char *type, const char *ndev)
{
    char f[64];
    snprintf(f, sizeof(f), "gids/%d", i);
    port_file(dev, f, gid);
    if (type != NULL) {
        snprintf(f, sizeof(f), "gid_attrs/types/%d", i);
        port_file(dev, f, type);
    }
    if (ndev != NULL) {
        snprintf(f, sizeof(f), "gid_attrs/ndevs/%d", i);
        port_file(dev, f, ndev);
    }
}

/* One Spark RDMA device: node_guid, device link, port 1 with a GID table. */
static void spark_dev(const char *dev, const char *pci, const char *state, const char *ndev,
                      const char *ipv4_hex, const char *mtu)
{
    char rel[512], text[128];
    snprintf(rel, sizeof(rel), "class/infiniband/%s/node_guid", dev);
    put(rel, "0c42:a103:0065:4f8a\n");
    snprintf(rel, sizeof(rel), "%s/class/infiniband/%s/device", root, dev);
    snprintf(text, sizeof(text), "../../../devices/pci0000:00/0000:00:01.0/%s", pci);
    assert_int_equal(symlink(text, rel), 0);
    port_file(dev, "state", state);
    port_file(dev, "link_layer", "Ethernet\n");
    port_file(dev, "rate", "200 Gb/sec (4X HDR)\n");
    const char *ll = "fe80:0000:0000:0000:0e42:a1ff:fe65:4f8a\n";
    gid_entry(dev, 0, ll, "IB/RoCE v1\n", ndev);
    gid_entry(dev, 1, ll, "RoCE v2\n", ndev);
    if (ipv4_hex != NULL) {
        snprintf(text, sizeof(text), "0000:0000:0000:0000:0000:ffff:%s\n", ipv4_hex);
        gid_entry(dev, 2, text, "IB/RoCE v1\n", ndev);
        gid_entry(dev, 3, text, "RoCE v2\n", ndev);
    }
    /* Empty entries: the kernel has no readable type for them (EINVAL). */
    gid_entry(dev, 4, "0000:0000:0000:0000:0000:0000:0000:0000\n", NULL, NULL);
    gid_entry(dev, 5, "fe80:0000:0000:0000:0000:0000:0000:0000\n", NULL, NULL);
    snprintf(rel, sizeof(rel), "class/net/%s/mtu", ndev);
    put(rel, mtu);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    snprintf(root, sizeof(root), "%s/tandem-topo-XXXXXX",
             getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(root) == NULL) {
        return -1;
    }
    spark_dev("rocep1s0f1", "0000:01:00.1", "4: ACTIVE\n", "enp1s0f1np1", "c0a8:c80d", "9000\n");
    spark_dev("roceP2p1s0f1", "0002:01:00.1", "4: ACTIVE\n", "enP2p1s0f1np1", "c0a8:c90d",
              "1500\n");
    spark_dev("rocep1s0f0", "0000:01:00.0", "1: DOWN\n", "enp1s0f0np0", NULL, "1500\n");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static const topo_device_t *find_dev(const topo_desc_t *d, const char *name)
{
    for (int i = 0; i < d->n_devs; i++) {
        if (strcmp(d->devs[i].name, name) == 0) {
            return &d->devs[i];
        }
    }
    fail_msg("device %s not found", name);
    return NULL;
}

static void test_gid_table(void **state)
{
    (void)state;
    topo_port_t port = {.num = 1, .link_layer = TOPO_LINK_ETHERNET};
    assert_int_equal(topo_sysfs_read_gids(root, "rocep1s0f1", &port, NULL), TDM_OK);
    assert_int_equal(port.n_gids, 4); /* entries 4 and 5 are empty */
    char buf[64];
    static const topo_gid_type_t types[4] = {TOPO_GID_ROCE_V1, TOPO_GID_ROCE_V2, TOPO_GID_ROCE_V1,
                                             TOPO_GID_ROCE_V2};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(port.gids[i].index, i);
        assert_int_equal(port.gids[i].type, types[i]);
        assert_string_equal(port.gids[i].netdev, "enp1s0f1np1");
        assert_int_equal(topo_gid_ipv4(&port.gids[i], buf, sizeof(buf)), i >= 2);
    }
    topo_gid_ipv4(&port.gids[3], buf, sizeof(buf));
    assert_string_equal(buf, "192.168.200.13");
    topo_gid_format(&port.gids[0], buf, sizeof(buf));
    assert_string_equal(buf, "fe80::e42:a1ff:fe65:4f8a");
    assert_string_equal(port.netdev, "enp1s0f1np1");
    free(port.gids);

    /* On an InfiniBand port the same kernel type string means an IB GID. */
    topo_port_t ib = {.num = 1, .link_layer = TOPO_LINK_INFINIBAND};
    assert_int_equal(topo_sysfs_read_gids(root, "rocep1s0f1", &ib, NULL), TDM_OK);
    assert_int_equal(ib.gids[0].type, TOPO_GID_IB);
    assert_int_equal(ib.gids[1].type, TOPO_GID_ROCE_V2);
    free(ib.gids);

    /* A port without a gids directory has an empty table. */
    topo_port_t none = {.num = 2, .link_layer = TOPO_LINK_ETHERNET};
    assert_int_equal(topo_sysfs_read_gids(root, "rocep1s0f1", &none, NULL), TDM_OK);
    assert_int_equal(none.n_gids, 0);
    assert_null(none.gids);
}

static void test_discover(void **state)
{
    (void)state;
    topo_desc_t *d = NULL;
    assert_int_equal(topo_discover_sysfs(root, &d, NULL), TDM_OK);
    assert_int_equal(d->n_devs, 3);
    /* strcmp order: 'P' sorts before 'p'. */
    assert_string_equal(d->devs[0].name, "roceP2p1s0f1");
    assert_string_equal(d->devs[1].name, "rocep1s0f0");
    assert_string_equal(d->devs[2].name, "rocep1s0f1");

    const topo_device_t *a = find_dev(d, "rocep1s0f1");
    assert_string_equal(a->pci, "0000:01:00.1");
    assert_true(a->node_guid == 0x0c42a10300654f8aull);
    assert_int_equal(a->n_ports, 1);
    const topo_port_t *pa = &a->ports[0];
    assert_int_equal(pa->num, 1);
    assert_int_equal(pa->state, TOPO_PORT_ACTIVE);
    assert_int_equal(pa->link_layer, TOPO_LINK_ETHERNET);
    assert_true(pa->rate_gbps == 200.0);
    assert_int_equal(pa->width, 4);
    assert_true(pa->lane_gbps == 50.0);
    assert_int_equal(pa->active_mtu, 4096);
    assert_int_equal(pa->n_gids, 4);
    assert_int_equal(pa->gids[3].type, TOPO_GID_ROCE_V2);

    const topo_device_t *b = find_dev(d, "roceP2p1s0f1");
    assert_string_equal(b->pci, "0002:01:00.1");
    assert_int_equal(b->ports[0].active_mtu, 1024);
    assert_string_equal(b->ports[0].netdev, "enP2p1s0f1np1");

    const topo_device_t *c = find_dev(d, "rocep1s0f0");
    assert_int_equal(c->ports[0].state, TOPO_PORT_DOWN);
    assert_int_equal(c->ports[0].n_gids, 2);

    topo_proposal_t p;
    topo_propose(d, &p);
    assert_int_equal(p.transport, TOPO_TRANSPORT_RDMA);
    assert_string_equal(p.ucx_net_devices, "rocep1s0f1:1,roceP2p1s0f1:1");
    assert_int_equal(p.n_twin_pairs, 1);
    assert_int_equal(p.rails[0].gid_index, 3);
    assert_int_equal(p.n_warnings, 1); /* roceP2p1s0f1: MTU 1500 -> RDMA MTU 1024 */
    assert_non_null(strstr(p.warnings[0], "MTU 9000 on enP2p1s0f1np1"));
    topo_desc_destroy(d);
}

static void test_no_tree(void **state)
{
    (void)state;
    char missing[512];
    snprintf(missing, sizeof(missing), "%s/nothing-here", root);
    topo_desc_t *d = NULL;
    assert_int_equal(topo_discover_sysfs(missing, &d, NULL), TDM_OK);
    assert_int_equal(d->n_devs, 0);
    assert_non_null(strstr(d->note, "No such file"));
    topo_proposal_t p;
    topo_propose(d, &p);
    assert_int_equal(p.transport, TOPO_TRANSPORT_TCP);
    topo_desc_destroy(d);
    topo_desc_destroy(NULL);
}

static void test_verbs_without_devices(void **state)
{
    (void)state;
    /* This machine may or may not have RDMA; either way discovery must not fail. */
    topo_desc_t *d = NULL;
    assert_int_equal(topo_discover_verbs(root, &d, NULL), TDM_OK);
    if (d->n_devs == 0) {
        assert_true(d->note[0] != '\0');
    }
    topo_desc_destroy(d);
}

static void test_meminfo(void **state)
{
    (void)state;
    put("meminfo", "MemTotal:       131072000 kB\nMemFree:         1000 kB\n"
                   "MemAvailable:   120000000 kB\nBuffers:           10 kB\n");
    char path[512];
    snprintf(path, sizeof(path), "%s/meminfo", root);
    uint64_t v = 0;
    assert_int_equal(topo_meminfo_available(path, &v, NULL), TDM_OK);
    assert_true(v == 120000000ull * 1024);
    put("meminfo2", "MemTotal: 10 kB\n");
    snprintf(path, sizeof(path), "%s/meminfo2", root);
    tdm_error_t err = {0};
    assert_int_equal(topo_meminfo_available(path, &v, &err), TDM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "MemAvailable"));
    assert_int_equal(topo_meminfo_available(NULL, &v, NULL), TDM_OK); /* /proc/meminfo */
    assert_true(v > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gid_table), cmocka_unit_test(test_discover),
        cmocka_unit_test(test_no_tree),   cmocka_unit_test(test_verbs_without_devices),
        cmocka_unit_test(test_meminfo),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

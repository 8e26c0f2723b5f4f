/* test_topo_propose.c - the UCX device proposal (topology/topo_propose.c) over fabricated
 * descriptions: a DGX Spark with both twins of the cabled port up (listed in either
 * order, named rocep.../roceP... or mlx5_N), one twin down, one twin up without an IPv4
 * address, two cables, InfiniBand only, devices but nothing usable, and no devices; plus
 * the small helpers (verbs codes, GID text, twin keys). */
#include "topology/topo.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

/* ---- fabricated Spark ---------------------------------------------------------------- */

enum { MAX_G = 4 };

typedef struct fake_port {
    topo_port_t port;
    topo_gid_t gids[MAX_G];
} fake_port_t;

static void gid(topo_gid_t *g, int index, const char *text, topo_gid_type_t type,
                const char *netdev)
{
    memset(g, 0, sizeof(*g));
    g->index = index;
    assert_true(topo_gid_parse(text, g->raw));
    g->type = type;
    strcpy(g->netdev, netdev);
}

/* A RoCE port as a Spark twin shows it: link-local v1/v2 GIDs and, when ipv4_hex is set
 * ("c0a8:640a" = 192.168.100.10), the IPv4-mapped v1/v2 pair at indices 2 and 3. */
static void roce_port(fake_port_t *f, topo_port_state_t state, const char *netdev,
                      const char *ipv4_hex, int mtu)
{
    memset(f, 0, sizeof(*f));
    topo_port_t *p = &f->port;
    p->num = 1;
    p->state = state;
    p->link_layer = TOPO_LINK_ETHERNET;
    p->width = 4;
    p->lane_gbps = 50;
    p->rate_gbps = 200;
    p->active_mtu = mtu;
    p->max_mtu = 4096;
    strcpy(p->netdev, netdev);
    gid(&f->gids[0], 0, "fe80:0000:0000:0000:0e42:a1ff:fe65:4f8a", TOPO_GID_ROCE_V1, netdev);
    gid(&f->gids[1], 1, "fe80:0000:0000:0000:0e42:a1ff:fe65:4f8a", TOPO_GID_ROCE_V2, netdev);
    p->n_gids = 2;
    if (ipv4_hex != NULL) {
        char text[64];
        snprintf(text, sizeof(text), "0000:0000:0000:0000:0000:ffff:%s", ipv4_hex);
        gid(&f->gids[2], 2, text, TOPO_GID_ROCE_V1, netdev);
        gid(&f->gids[3], 3, text, TOPO_GID_ROCE_V2, netdev);
        p->n_gids = 4;
    }
    p->gids = f->gids;
}

static void device(topo_device_t *d, const char *name, const char *pci, topo_port_t *port)
{
    memset(d, 0, sizeof(*d));
    strcpy(d->name, name);
    strcpy(d->pci, pci);
    d->node_guid = 0x0c42a10300654f8aull;
    d->n_ports = 1;
    d->ports = port;
}

typedef struct spark {
    fake_port_t f[4];
    topo_device_t devs[4];
    topo_desc_t desc;
} spark_t;

/* The four RDMA devices of a Spark in sysfs order (roceP... sorts first), the cable on
 * port f1: f1 twins as given, f0 twins DOWN. */
static void make_spark(spark_t *s, topo_port_state_t state_a, const char *ip_a,
                       topo_port_state_t state_b, const char *ip_b, bool mlx5_names)
{
    memset(s, 0, sizeof(*s));
    roce_port(&s->f[0], TOPO_PORT_DOWN, "enP2p1s0f0np0", NULL, 1024);
    roce_port(&s->f[1], state_b, "enP2p1s0f1np1", ip_b, 4096);
    roce_port(&s->f[2], TOPO_PORT_DOWN, "enp1s0f0np0", NULL, 1024);
    roce_port(&s->f[3], state_a, "enp1s0f1np1", ip_a, 4096);
    device(&s->devs[0], mlx5_names ? "mlx5_2" : "roceP2p1s0f0", "0002:01:00.0", &s->f[0].port);
    device(&s->devs[1], mlx5_names ? "mlx5_3" : "roceP2p1s0f1", "0002:01:00.1", &s->f[1].port);
    device(&s->devs[2], mlx5_names ? "mlx5_0" : "rocep1s0f0", "0000:01:00.0", &s->f[2].port);
    device(&s->devs[3], mlx5_names ? "mlx5_1" : "rocep1s0f1", "0000:01:00.1", &s->f[3].port);
    strcpy(s->desc.source, "test");
    s->desc.n_devs = 4;
    s->desc.devs = s->devs;
}

static bool any_contains(char lines[][TOPO_NOTE_MAX], int n, const char *needle)
{
    for (int i = 0; i < n; i++) {
        if (strstr(lines[i], needle) != NULL) {
            return true;
        }
    }
    return false;
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_spark_two_twins_up(void **state)
{
    (void)state;
    spark_t s;
    make_spark(&s, TOPO_PORT_ACTIVE, "c0a8:640a", TOPO_PORT_ACTIVE, "c0a8:650a", false);
    topo_proposal_t p;
    topo_propose(&s.desc, &p);
    assert_int_equal(p.transport, TOPO_TRANSPORT_RDMA);
    assert_int_equal(p.n_rails, 2);
    /* Domain 0 first although sysfs lists roceP2... first. */
    assert_string_equal(p.ucx_net_devices, "rocep1s0f1:1,roceP2p1s0f1:1");
    assert_string_equal(p.nccl_ib_hca, "rocep1s0f1:1,roceP2p1s0f1:1");
    assert_int_equal(p.n_twin_pairs, 1);
    assert_int_equal(p.n_twins_missing, 0);
    assert_int_equal(p.rails[0].twin, 1);
    assert_int_equal(p.rails[1].twin, 0);
    assert_int_equal(p.rails[0].gid_index, 3);
    assert_int_equal(p.max_rndv_rails, 0);
    assert_int_equal(p.n_warnings, 0);
    assert_true(any_contains(p.notes, p.n_notes, "twins"));
    assert_true(any_contains(p.notes, p.n_notes, "100 Gb/s"));
    assert_true(any_contains(p.notes, p.n_notes, "0000:01:00.1 and 0002:01:00.1"));
    assert_true(any_contains(p.notes, p.n_notes, "not used: rocep1s0f0 port 1"));
}

static void test_spark_mlx5_names(void **state)
{
    (void)state;
    spark_t s;
    make_spark(&s, TOPO_PORT_ACTIVE, "c0a8:640a", TOPO_PORT_ACTIVE, "c0a8:650a", true);
    topo_proposal_t p;
    topo_propose(&s.desc, &p);
    assert_string_equal(p.ucx_net_devices, "mlx5_1:1,mlx5_3:1");
    assert_int_equal(p.n_twin_pairs, 1);

    /* Without PCI addresses the names carry no twin relation: both still go in. */
    for (int i = 0; i < 4; i++) {
        s.devs[i].pci[0] = '\0';
    }
    topo_propose(&s.desc, &p);
    assert_string_equal(p.ucx_net_devices, "mlx5_3:1,mlx5_1:1");
    assert_int_equal(p.n_twin_pairs, 0);

    /* ... while roce names do: the key comes from p<bus>s<slot>f<fn>. */
    make_spark(&s, TOPO_PORT_ACTIVE, "c0a8:640a", TOPO_PORT_ACTIVE, "c0a8:650a", false);
    for (int i = 0; i < 4; i++) {
        s.devs[i].pci[0] = '\0';
    }
    topo_propose(&s.desc, &p);
    assert_string_equal(p.ucx_net_devices, "rocep1s0f1:1,roceP2p1s0f1:1");
    assert_int_equal(p.n_twin_pairs, 1);
}

static void test_spark_one_twin_down(void **state)
{
    (void)state;
    spark_t s;
    make_spark(&s, TOPO_PORT_ACTIVE, "c0a8:640a", TOPO_PORT_DOWN, "c0a8:650a", false);
    topo_proposal_t p;
    topo_propose(&s.desc, &p);
    assert_int_equal(p.transport, TOPO_TRANSPORT_RDMA);
    assert_string_equal(p.ucx_net_devices, "rocep1s0f1:1");
    assert_int_equal(p.n_twin_pairs, 0);
    assert_int_equal(p.n_twins_missing, 1);
    assert_int_equal(p.rails[0].twin, -1);
    assert_true(any_contains(p.warnings, p.n_warnings, "twin roceP2p1s0f1:1 is not"));
    assert_true(any_contains(p.warnings, p.n_warnings, "state DOWN"));
    assert_true(any_contains(p.warnings, p.n_warnings, "about 100 Gb/s"));
}

static void test_spark_twin_without_ipv4(void **state)
{
    (void)state;
    spark_t s;
    make_spark(&s, TOPO_PORT_ACTIVE, "c0a8:640a", TOPO_PORT_ACTIVE, NULL, false);
    topo_proposal_t p;
    topo_propose(&s.desc, &p);
    assert_string_equal(p.ucx_net_devices, "rocep1s0f1:1");
    assert_int_equal(p.n_twins_missing, 1);
    assert_true(any_contains(p.warnings, p.n_warnings, "give enP2p1s0f1np1 an IPv4 address"));
}

static void test_spark_two_cables_and_mtu(void **state)
{
    (void)state;
    spark_t s;
    make_spark(&s, TOPO_PORT_ACTIVE, "c0a8:640a", TOPO_PORT_ACTIVE, "c0a8:650a", false);
    roce_port(&s.f[0], TOPO_PORT_ACTIVE, "enP2p1s0f0np0", "c0a8:670a", 1024);
    roce_port(&s.f[2], TOPO_PORT_ACTIVE, "enp1s0f0np0", "c0a8:660a", 4096);
    topo_proposal_t p;
    topo_propose(&s.desc, &p);
    assert_int_equal(p.n_rails, 4);
    assert_int_equal(p.n_twin_pairs, 2);
    assert_string_equal(p.ucx_net_devices,
                        "rocep1s0f0:1,roceP2p1s0f0:1,rocep1s0f1:1,roceP2p1s0f1:1");
    assert_int_equal(p.max_rndv_rails, 4);
    assert_true(any_contains(p.warnings, p.n_warnings, "roceP2p1s0f0:1 has an RDMA MTU of 1024"));
    assert_true(any_contains(p.notes, p.n_notes, "UCX_MAX_RNDV_RAILS=4"));
}

static void test_infiniband_only(void **state)
{
    (void)state;
    topo_port_t ports[2];
    topo_device_t devs[2];
    memset(ports, 0, sizeof(ports));
    const char *pci[2] = {"0000:17:00.0", "0000:65:00.0"};
    const char *name[2] = {"mlx5_0", "mlx5_1"};
    for (int i = 0; i < 2; i++) {
        ports[i].num = 1;
        ports[i].state = TOPO_PORT_ACTIVE;
        ports[i].link_layer = TOPO_LINK_INFINIBAND;
        ports[i].width = 4;
        ports[i].lane_gbps = 100;
        ports[i].rate_gbps = 400;
        ports[i].active_mtu = 4096;
        device(&devs[i], name[i], pci[i], &ports[i]);
    }
    topo_desc_t d = {.n_devs = 2, .devs = devs};
    topo_proposal_t p;
    topo_propose(&d, &p);
    assert_int_equal(p.transport, TOPO_TRANSPORT_RDMA);
    assert_string_equal(p.ucx_net_devices, "mlx5_0:1,mlx5_1:1");
    assert_int_equal(p.n_twin_pairs, 0);
    assert_int_equal(p.rails[0].gid_index, -1);
    assert_int_equal(p.n_warnings, 0);
}

static void test_nothing_usable_and_no_devices(void **state)
{
    (void)state;
    spark_t s;
    make_spark(&s, TOPO_PORT_DOWN, "c0a8:640a", TOPO_PORT_DOWN, "c0a8:650a", false);
    topo_proposal_t p;
    topo_propose(&s.desc, &p);
    assert_int_equal(p.transport, TOPO_TRANSPORT_TCP);
    assert_int_equal(p.n_rails, 0);
    assert_string_equal(p.ucx_net_devices, "");
    assert_true(any_contains(p.notes, p.n_notes, "UCX will use TCP"));
    assert_int_equal(p.n_warnings, 4);

    topo_desc_t none = {.n_devs = 0};
    strcpy(none.note, "ibv_get_device_list: Function not implemented");
    topo_propose(&none, &p);
    assert_int_equal(p.transport, TOPO_TRANSPORT_TCP);
    assert_int_equal(p.n_rails, 0);
    assert_true(any_contains(p.notes, p.n_notes, "no RDMA devices"));
    assert_true(any_contains(p.notes, p.n_notes, "Function not implemented"));
    assert_true(any_contains(p.notes, p.n_notes, "shared memory"));
    assert_int_equal(p.n_warnings, 0);
}

static void test_helpers(void **state)
{
    (void)state;
    assert_int_equal(topo_ib_width_lanes(2), 4);
    assert_int_equal(topo_ib_width_lanes(16), 2);
    assert_int_equal(topo_ib_width_lanes(3), 0);
    assert_true(topo_ib_speed_gbps(64) == 50.0);
    assert_true(topo_ib_speed_gbps(128) == 100.0);
    assert_int_equal(topo_ib_mtu_bytes(5), 4096);
    assert_int_equal(topo_ib_mtu_bytes(3), 1024);
    assert_int_equal(topo_ib_mtu_bytes(0), 0);
    assert_int_equal(topo_roce_mtu_for_netdev(9000), 4096);
    assert_int_equal(topo_roce_mtu_for_netdev(1500), 1024);
    assert_int_equal(topo_roce_mtu_for_netdev(4200), 4096);
    assert_int_equal(topo_roce_mtu_for_netdev(4000), 2048);

    topo_gid_t g = {0};
    assert_true(topo_gid_parse("0000:0000:0000:0000:0000:ffff:c0a8:c80d\n", g.raw));
    char buf[64];
    assert_true(topo_gid_ipv4(&g, buf, sizeof(buf)));
    assert_string_equal(buf, "192.168.200.13");
    topo_gid_format(&g, buf, sizeof(buf));
    assert_string_equal(buf, "::ffff:192.168.200.13");
    assert_true(topo_gid_parse("fe80:0000:0000:0000:0e42:a1ff:fe65:4f8a", g.raw));
    assert_false(topo_gid_ipv4(&g, buf, sizeof(buf)));
    topo_gid_format(&g, buf, sizeof(buf));
    assert_string_equal(buf, "fe80::e42:a1ff:fe65:4f8a");
    assert_false(topo_gid_parse("fe80::1", g.raw));
    assert_false(topo_gid_parse("fe80:0000:0000:0000:0e42:a1ff:fe65:4f8a:0000", g.raw));

    topo_device_t d = {0};
    char key[16];
    unsigned dom = 99;
    strcpy(d.name, "roceP2p1s0f1");
    assert_true(topo_twin_key(&d, key, sizeof(key), &dom));
    assert_string_equal(key, "01:00.1");
    assert_int_equal(dom, 2);
    strcpy(d.name, "rocep1s0f1");
    assert_true(topo_twin_key(&d, key, sizeof(key), &dom));
    assert_string_equal(key, "01:00.1");
    assert_int_equal(dom, 0);
    strcpy(d.name, "mlx5_0");
    assert_false(topo_twin_key(&d, key, sizeof(key), &dom));
    strcpy(d.pci, "0002:01:00.1");
    assert_true(topo_twin_key(&d, key, sizeof(key), &dom));
    assert_string_equal(key, "01:00.1");
    assert_int_equal(dom, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spark_two_twins_up),
        cmocka_unit_test(test_spark_mlx5_names),
        cmocka_unit_test(test_spark_one_twin_down),
        cmocka_unit_test(test_spark_twin_without_ipv4),
        cmocka_unit_test(test_spark_two_cables_and_mtu),
        cmocka_unit_test(test_infiniband_only),
        cmocka_unit_test(test_nothing_usable_and_no_devices),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

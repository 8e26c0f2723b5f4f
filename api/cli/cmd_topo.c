/*
 * cmd_topo.c - `tandem topo [--json] [--sysfs ROOT]`: this node's RDMA devices (ports,
 * state, link layer, speed, MTU, GID table with RoCE v1/v2 types, netdevs and IPv4
 * addresses) and the UCX device list proposed for it (topology/topo.h). With no usable
 * RDMA port it says so and that UCX will use TCP (and shared memory within a node).
 *
 * --sysfs ROOT reads ROOT/class/infiniband only, without libibverbs: for a copied or
 * fabricated tree (the Python tests build a DGX Spark's).
 */
#include "api/cli/cli.h"
#include "topology/topo.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fputs("usage: tandem topo [--json] [--sysfs ROOT]\n"
          "\n"
          "Lists the RDMA devices of this node (libibverbs; GID types and netdevs from sysfs)\n"
          "and proposes the UCX device list (UCX_NET_DEVICES) for distributed serving: on a\n"
          "DGX Spark both PCIe halves (\"twins\") of the cabled ConnectX-7 port.\n"
          "\n"
          "  --json        one JSON object\n"
          "  --sysfs ROOT  read ROOT/class/infiniband only (no libibverbs)\n",
          out);
}

static void guid_str(uint64_t g, char *buf, size_t n)
{
    snprintf(buf, n, "%04x:%04x:%04x:%04x", (unsigned)(g >> 48) & 0xffff,
             (unsigned)(g >> 32) & 0xffff, (unsigned)(g >> 16) & 0xffff, (unsigned)g & 0xffff);
}

static void print_text(const topo_desc_t *d, const topo_proposal_t *pr)
{
    char buf[64], ip[20];
    printf("RDMA devices (%s): %d\n", d->source, d->n_devs);
    if (d->n_devs == 0 && d->note[0] != '\0') {
        printf("  %s\n", d->note);
    }
    for (int i = 0; i < d->n_devs; i++) {
        const topo_device_t *dev = &d->devs[i];
        guid_str(dev->node_guid, buf, sizeof(buf));
        printf("%s  node GUID %s  PCI %s\n", dev->name, buf, dev->pci[0] ? dev->pci : "?");
        if (dev->error[0] != '\0') {
            printf("  error: %s\n", dev->error);
        }
        for (int p = 0; p < dev->n_ports; p++) {
            const topo_port_t *port = &dev->ports[p];
            printf("  port %d  %s  %s%s", port->num, topo_port_state_name(port->state),
                   topo_link_layer_name(port->link_layer),
                   port->link_layer == TOPO_LINK_ETHERNET ? " (RoCE)" : "");
            if (port->rate_gbps > 0) {
                if (port->width > 0 && port->lane_gbps > 0) {
                    printf("  %dx %g Gb/s = %g Gb/s", port->width, port->lane_gbps,
                           port->rate_gbps);
                } else {
                    printf("  %g Gb/s", port->rate_gbps);
                }
            }
            if (port->active_mtu > 0) {
                printf("  MTU %d", port->active_mtu);
                if (port->max_mtu > 0) {
                    printf(" (max %d)", port->max_mtu);
                }
            }
            if (port->netdev[0] != '\0') {
                printf("  netdev %s", port->netdev);
            }
            printf("\n");
            for (int k = 0; k < port->n_gids; k++) {
                const topo_gid_t *g = &port->gids[k];
                char addr[64];
                topo_gid_format(g, addr, sizeof(addr));
                bool v4 = topo_gid_ipv4(g, ip, sizeof(ip));
                printf("    GID %3d  %-40s %-8s %-16s %s\n", g->index, addr,
                       topo_gid_type_name(g->type), v4 ? ip : "-", g->netdev[0] ? g->netdev : "-");
            }
        }
    }
    printf("\n");
    if (pr->transport == TOPO_TRANSPORT_TCP) {
        printf("transport: TCP (no usable RDMA port)\n");
    } else {
        printf("transport: RDMA over %d rail%s\n", pr->n_rails, pr->n_rails == 1 ? "" : "s");
        printf("  UCX_NET_DEVICES=%s\n", pr->ucx_net_devices);
        if (pr->max_rndv_rails > 0) {
            printf("  UCX_MAX_RNDV_RAILS=%d\n", pr->max_rndv_rails);
        }
        printf("  NCCL_IB_HCA=%s\n", pr->nccl_ib_hca);
    }
    if (pr->n_notes > 0) {
        printf("why:\n");
        for (int i = 0; i < pr->n_notes; i++) {
            printf("  - %s\n", pr->notes[i]);
        }
    }
    if (pr->n_warnings > 0) {
        printf("to fix:\n");
        for (int i = 0; i < pr->n_warnings; i++) {
            printf("  - %s\n", pr->warnings[i]);
        }
    }
}

static json_t *str_or_null(const char *s)
{
    return s[0] != '\0' ? json_string(s) : json_null();
}

static json_t *to_json(const topo_desc_t *d, const topo_proposal_t *pr)
{
    char buf[64], ip[20];
    json_t *root = json_object();
    json_object_set_new(root, "source", json_string(d->source));
    json_object_set_new(root, "note", str_or_null(d->note));
    json_t *devs = json_array();
    for (int i = 0; i < d->n_devs; i++) {
        const topo_device_t *dev = &d->devs[i];
        json_t *jd = json_object();
        guid_str(dev->node_guid, buf, sizeof(buf));
        json_object_set_new(jd, "name", json_string(dev->name));
        json_object_set_new(jd, "node_guid", json_string(buf));
        json_object_set_new(jd, "pci", str_or_null(dev->pci));
        json_object_set_new(jd, "error", str_or_null(dev->error));
        json_t *ports = json_array();
        for (int p = 0; p < dev->n_ports; p++) {
            const topo_port_t *port = &dev->ports[p];
            json_t *jp = json_object();
            json_object_set_new(jp, "port", json_integer(port->num));
            json_object_set_new(jp, "state", json_string(topo_port_state_name(port->state)));
            json_object_set_new(jp, "link_layer",
                                json_string(topo_link_layer_name(port->link_layer)));
            json_object_set_new(jp, "width", json_integer(port->width));
            json_object_set_new(jp, "lane_gbps", json_real(port->lane_gbps));
            json_object_set_new(jp, "rate_gbps", json_real(port->rate_gbps));
            json_object_set_new(jp, "active_mtu", json_integer(port->active_mtu));
            json_object_set_new(jp, "max_mtu", json_integer(port->max_mtu));
            json_object_set_new(jp, "netdev", str_or_null(port->netdev));
            json_t *gids = json_array();
            for (int k = 0; k < port->n_gids; k++) {
                const topo_gid_t *g = &port->gids[k];
                char addr[64];
                topo_gid_format(g, addr, sizeof(addr));
                json_t *jg = json_object();
                json_object_set_new(jg, "index", json_integer(g->index));
                json_object_set_new(jg, "gid", json_string(addr));
                json_object_set_new(jg, "type", json_string(topo_gid_type_name(g->type)));
                json_object_set_new(
                    jg, "ipv4", topo_gid_ipv4(g, ip, sizeof(ip)) ? json_string(ip) : json_null());
                json_object_set_new(jg, "netdev", str_or_null(g->netdev));
                json_array_append_new(gids, jg);
            }
            json_object_set_new(jp, "gids", gids);
            json_array_append_new(ports, jp);
        }
        json_object_set_new(jd, "ports", ports);
        json_array_append_new(devs, jd);
    }
    json_object_set_new(root, "devices", devs);

    json_t *jp = json_object();
    json_object_set_new(jp, "transport",
                        json_string(pr->transport == TOPO_TRANSPORT_RDMA ? "rdma" : "tcp"));
    json_object_set_new(jp, "ucx_net_devices", str_or_null(pr->ucx_net_devices));
    json_object_set_new(jp, "nccl_ib_hca", str_or_null(pr->nccl_ib_hca));
    json_object_set_new(jp, "ucx_max_rndv_rails",
                        pr->max_rndv_rails > 0 ? json_integer(pr->max_rndv_rails) : json_null());
    json_t *rails = json_array();
    for (int i = 0; i < pr->n_rails; i++) {
        const topo_rail_t *r = &pr->rails[i];
        json_t *jr = json_object();
        json_object_set_new(jr, "name", json_string(r->name));
        json_object_set_new(jr, "device", json_string(d->devs[r->dev].name));
        json_object_set_new(jr, "port", json_integer(d->devs[r->dev].ports[r->port].num));
        json_object_set_new(jr, "gid_index",
                            r->gid_index >= 0 ? json_integer(r->gid_index) : json_null());
        json_object_set_new(jr, "twin",
                            r->twin >= 0 ? json_string(pr->rails[r->twin].name) : json_null());
        json_array_append_new(rails, jr);
    }
    json_object_set_new(jp, "rails", rails);
    json_object_set_new(jp, "twin_pairs", json_integer(pr->n_twin_pairs));
    json_object_set_new(jp, "twins_missing", json_integer(pr->n_twins_missing));
    json_t *notes = json_array(), *warns = json_array();
    for (int i = 0; i < pr->n_notes; i++) {
        json_array_append_new(notes, json_string(pr->notes[i]));
    }
    for (int i = 0; i < pr->n_warnings; i++) {
        json_array_append_new(warns, json_string(pr->warnings[i]));
    }
    json_object_set_new(jp, "notes", notes);
    json_object_set_new(jp, "warnings", warns);
    json_object_set_new(root, "proposal", jp);
    return root;
}

int cmd_topo(int argc, char **argv)
{
    bool json = false;
    const char *sysfs = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--sysfs") == 0 && i + 1 < argc) {
            sysfs = argv[++i];
        } else {
            fprintf(stderr, "tandem topo: unknown option '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    tdm_error_t err = {0};
    topo_desc_t *d = NULL;
    tdm_status_t st =
        sysfs != NULL ? topo_discover_sysfs(sysfs, &d, &err) : topo_discover_verbs(NULL, &d, &err);
    if (st != TDM_OK) {
        fprintf(stderr, "tandem topo: %s\n", tdm_error_msg(&err));
        return 1;
    }
    topo_proposal_t *pr = malloc(sizeof(*pr));
    if (pr == NULL) {
        topo_desc_destroy(d);
        fprintf(stderr, "tandem topo: out of memory\n");
        return 1;
    }
    topo_propose(d, pr);
    int rc = 0;
    if (json) {
        json_t *root = to_json(d, pr);
        char *s = json_dumps(root, JSON_INDENT(2));
        if (s == NULL) {
            fprintf(stderr, "tandem topo: out of memory\n");
            rc = 1;
        } else {
            printf("%s\n", s);
            free(s);
        }
        json_decref(root);
    } else {
        print_text(d, pr);
    }
    free(pr);
    topo_desc_destroy(d);
    return rc;
}

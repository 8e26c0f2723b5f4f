/*
 * topo_desc.c - the pure parts of an RDMA description: verbs enum codes to numbers, GID
 * text, twin keys, and freeing a description.
 */
#include "topology/topo.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void topo_desc_destroy(topo_desc_t *d)
{
    if (d == NULL) {
        return;
    }
    for (int i = 0; i < d->n_devs; i++) {
        for (int p = 0; p < d->devs[i].n_ports; p++) {
            free(d->devs[i].ports[p].gids);
        }
        free(d->devs[i].ports);
    }
    free(d->devs);
    free(d);
}

int topo_ib_width_lanes(int code)
{
    switch (code) {
    case 1:
        return 1;
    case 2:
        return 4;
    case 4:
        return 8;
    case 8:
        return 12;
    case 16:
        return 2;
    default:
        return 0;
    }
}

double topo_ib_speed_gbps(int code)
{
    switch (code) {
    case 1: /* SDR */
        return 2.5;
    case 2: /* DDR */
        return 5.0;
    case 4: /* QDR */
    case 8: /* FDR10 */
        return 10.0;
    case 16: /* FDR */
        return 14.0;
    case 32: /* EDR */
        return 25.0;
    case 64: /* HDR */
        return 50.0;
    case 128: /* NDR */
        return 100.0;
    default:
        return 0.0;
    }
}

int topo_ib_mtu_bytes(int code)
{
    return code >= 1 && code <= 5 ? 128 << code : 0;
}

int topo_roce_mtu_for_netdev(int eth_mtu)
{
    /* GRH 40 + UDP 8 + BTH 12 + XRC ext 4 + AtomicETH 28 + ICRC 4 (include/rdma/ib_addr.h). */
    const int room = eth_mtu - 96;
    for (int m = 4096; m >= 256; m /= 2) {
        if (room >= m) {
            return m;
        }
    }
    return 0;
}

const char *topo_port_state_name(topo_port_state_t s)
{
    static const char *const names[] = {"NOP", "DOWN", "INIT", "ARMED", "ACTIVE", "ACTIVE_DEFER"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "UNKNOWN";
}

const char *topo_link_layer_name(topo_link_layer_t l)
{
    switch (l) {
    case TOPO_LINK_INFINIBAND:
        return "InfiniBand";
    case TOPO_LINK_ETHERNET:
        return "Ethernet";
    default:
        return "unknown";
    }
}

const char *topo_gid_type_name(topo_gid_type_t t)
{
    switch (t) {
    case TOPO_GID_IB:
        return "IB";
    case TOPO_GID_ROCE_V1:
        return "RoCE v1";
    case TOPO_GID_ROCE_V2:
        return "RoCE v2";
    default:
        return "unknown";
    }
}

bool topo_gid_parse(const char *text, uint8_t raw[16])
{
    const char *p = text;
    for (int g = 0; g < 8; g++) {
        unsigned v = 0;
        for (int i = 0; i < 4; i++, p++) {
            if (!isxdigit((unsigned char)*p)) {
                return false;
            }
            v = v * 16 + (unsigned)(isdigit((unsigned char)*p)
                                        ? *p - '0'
                                        : tolower((unsigned char)*p) - 'a' + 10);
        }
        raw[2 * g] = (uint8_t)(v >> 8);
        raw[2 * g + 1] = (uint8_t)v;
        if (g < 7 && *p++ != ':') {
            return false;
        }
    }
    while (*p == '\n' || *p == ' ') {
        p++;
    }
    return *p == '\0';
}

bool topo_gid_ipv4(const topo_gid_t *g, char *buf, size_t n)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(g->raw, prefix, sizeof(prefix)) != 0) {
        return false;
    }
    if (buf != NULL) {
        snprintf(buf, n, "%u.%u.%u.%u", g->raw[12], g->raw[13], g->raw[14], g->raw[15]);
    }
    return true;
}

void topo_gid_format(const topo_gid_t *g, char *buf, size_t n)
{
    char tmp[INET6_ADDRSTRLEN];
    if (inet_ntop(AF_INET6, g->raw, tmp, sizeof(tmp)) == NULL) {
        tmp[0] = '\0';
    }
    snprintf(buf, n, "%s", tmp);
}

/* "roce[P<dom>]p<bus>s<slot>f<fn>[...]" (systemd's names for RDMA devices, as the Spark's
 * rocep1s0f1 / roceP2p1s0f1; numbers in decimal) -> the key topo_twin_key makes from the
 * PCI address ("01:00.1") and the domain. */
static bool key_from_name(const char *name, char *key, size_t n, unsigned *domain)
{
    if (strncmp(name, "roce", 4) != 0) {
        return false;
    }
    const char *p = name + 4;
    unsigned dom = 0;
    if (*p == 'P') {
        char *end;
        dom = (unsigned)strtoul(p + 1, &end, 10);
        if (end == p + 1) {
            return false;
        }
        p = end;
    }
    unsigned bus, slot, fn;
    int used = 0;
    if (sscanf(p, "p%us%uf%u%n", &bus, &slot, &fn, &used) != 3 || used == 0) {
        return false;
    }
    snprintf(key, n, "%02x:%02x.%x", bus, slot, fn);
    *domain = dom;
    return true;
}

bool topo_twin_key(const topo_device_t *dev, char *key, size_t n, unsigned *domain)
{
    unsigned dom, bus, slot, fn;
    int used = 0;
    if (dev->pci[0] != '\0' &&
        sscanf(dev->pci, "%x:%x:%x.%x%n", &dom, &bus, &slot, &fn, &used) == 4 &&
        dev->pci[used] == '\0') {
        snprintf(key, n, "%02x:%02x.%x", bus, slot, fn);
        *domain = dom;
        return true;
    }
    return key_from_name(dev->name, key, n, domain);
}

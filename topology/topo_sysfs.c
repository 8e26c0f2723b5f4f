/*
 * topo_sysfs.c - reading RDMA devices from sysfs under a root directory:
 *
 *   <root>/class/infiniband/<dev>/node_guid            "0c42:a103:0065:4f8a"
 *   <root>/class/infiniband/<dev>/device               -> .../0000:01:00.1 (PCI address)
 *   <root>/class/infiniband/<dev>/ports/<p>/state      "4: ACTIVE"
 *   <root>/class/infiniband/<dev>/ports/<p>/link_layer "Ethernet" | "InfiniBand"
 *   <root>/class/infiniband/<dev>/ports/<p>/rate       "200 Gb/sec (4X HDR)"
 *   <root>/class/infiniband/<dev>/ports/<p>/gids/<i>   "0000:...:ffff:c0a8:c80d"
 *   <root>/class/infiniband/<dev>/ports/<p>/gid_attrs/types/<i>  "RoCE v2"
 *   <root>/class/infiniband/<dev>/ports/<p>/gid_attrs/ndevs/<i>  "enp1s0f1np1"
 *   <root>/class/net/<netdev>/mtu                      "9000"
 *
 * The GID walk is rdma-core's show_gids (kernel-boot/show_gids in rdma-core): empty
 * entries (all zero, or the bare fe80:: prefix) are skipped before their attributes are
 * read, since the kernel answers EINVAL for the type of an empty entry.
 */
#include "common/mem.h"
#include "topology/topo.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Formats a path; false when it does not fit. */
static bool path_fmt(char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool path_fmt(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    return r >= 0 && (size_t)r < n;
}

/* The first line of a small file, without its newline; false when unreadable. */
static bool read_line(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return false;
    }
    bool ok = fgets(buf, (int)n, f) != NULL;
    fclose(f);
    if (!ok) {
        return false;
    }
    buf[strcspn(buf, "\n")] = '\0';
    return true;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The numeric entry names of a directory, ascending. *n = 0 when it does not exist. */
static tdm_status_t list_numeric(const char *dir, int **out, int *n, tdm_error_t *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) {
        return errno == ENOENT ? TDM_OK
                               : tdm_error_set(err, TDM_ERR_IO, "%s: %s", dir, strerror(errno));
    }
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long v = strtol(e->d_name, &end, 10);
        if (end == e->d_name || *end != '\0' || v < 0 || v > INT_MAX) {
            continue;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            *out = tdm_xrealloc(*out, (size_t)cap * sizeof(int));
        }
        (*out)[(*n)++] = (int)v;
    }
    closedir(d);
    if (*n > 0) {
        qsort(*out, (size_t)*n, sizeof(int), cmp_int);
    }
    return TDM_OK;
}

static topo_gid_type_t gid_type_from_text(const char *t, topo_link_layer_t ll)
{
    if (strstr(t, "v2") != NULL || strstr(t, "V2") != NULL) {
        return TOPO_GID_ROCE_V2;
    }
    if (strstr(t, "v1") != NULL || strstr(t, "V1") != NULL || strstr(t, "IB") != NULL) {
        /* "IB/RoCE v1": the same kernel type names an IB GID on an InfiniBand port. */
        return ll == TOPO_LINK_INFINIBAND ? TOPO_GID_IB : TOPO_GID_ROCE_V1;
    }
    return TOPO_GID_UNKNOWN;
}

tdm_status_t topo_sysfs_read_gids(const char *root, const char *dev, topo_port_t *port,
                                  tdm_error_t *err)
{
    char dir[PATH_MAX], path[PATH_MAX], line[128];
    if (!path_fmt(dir, sizeof(dir), "%s/class/infiniband/%s/ports/%d", root, dev, port->num)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "sysfs path for %s port %d too long", dev,
                             port->num);
    }
    int *idx = NULL, n_idx = 0;
    char gdir[PATH_MAX];
    if (!path_fmt(gdir, sizeof(gdir), "%s/gids", dir)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "sysfs path %s/gids too long", dir);
    }
    tdm_status_t st = list_numeric(gdir, &idx, &n_idx, err);
    if (st != TDM_OK) {
        return st;
    }
    static const uint8_t zero[16] = {0};
    static const uint8_t fe80[16] = {0xfe, 0x80};
    topo_gid_t *gids = n_idx > 0 ? tdm_xcalloc((size_t)n_idx, sizeof(topo_gid_t)) : NULL;
    int n = 0;
    for (int i = 0; i < n_idx; i++) {
        topo_gid_t *g = &gids[n];
        if (!path_fmt(path, sizeof(path), "%s/%d", gdir, idx[i]) ||
            !read_line(path, line, sizeof(line)) || !topo_gid_parse(line, g->raw)) {
            continue; /* unreadable or malformed: show_gids prints nothing either */
        }
        if (memcmp(g->raw, zero, 16) == 0 || memcmp(g->raw, fe80, 16) == 0) {
            continue;
        }
        g->index = idx[i];
        g->type = TOPO_GID_UNKNOWN;
        if (path_fmt(path, sizeof(path), "%s/gid_attrs/types/%d", dir, idx[i]) &&
            read_line(path, line, sizeof(line))) {
            g->type = gid_type_from_text(line, port->link_layer);
        }
        g->netdev[0] = '\0';
        if (path_fmt(path, sizeof(path), "%s/gid_attrs/ndevs/%d", dir, idx[i]) &&
            read_line(path, line, sizeof(line))) {
            snprintf(g->netdev, sizeof(g->netdev), "%.*s", TOPO_NAME_MAX - 1, line);
        }
        if (port->netdev[0] == '\0' && g->netdev[0] != '\0') {
            snprintf(port->netdev, sizeof(port->netdev), "%s", g->netdev);
        }
        n++;
    }
    free(idx);
    free(port->gids);
    port->gids = n > 0 ? gids : NULL;
    if (n == 0) {
        free(gids);
    }
    port->n_gids = n;
    return TDM_OK;
}

/* "200 Gb/sec (4X HDR)" -> rate 200, width 4, lane 50. */
static void parse_rate(const char *s, topo_port_t *port)
{
    char *end;
    double rate = strtod(s, &end);
    if (end == s || rate <= 0) {
        return;
    }
    port->rate_gbps = rate;
    const char *w = strchr(end, '(');
    if (w != NULL) {
        int lanes = atoi(w + 1);
        if (lanes > 0) {
            port->width = lanes;
            port->lane_gbps = rate / lanes;
        }
    }
}

static tdm_status_t read_port(const char *root, const char *dev, int num, topo_port_t *port,
                              tdm_error_t *err)
{
    char path[PATH_MAX], line[128];
    memset(port, 0, sizeof(*port));
    port->num = num;
    if (path_fmt(path, sizeof(path), "%s/class/infiniband/%s/ports/%d/state", root, dev, num) &&
        read_line(path, line, sizeof(line))) {
        long s = strtol(line, NULL, 10);
        port->state =
            s >= 0 && s <= TOPO_PORT_ACTIVE_DEFER ? (topo_port_state_t)s : TOPO_PORT_UNKNOWN;
    }
    if (path_fmt(path, sizeof(path), "%s/class/infiniband/%s/ports/%d/link_layer", root, dev,
                 num) &&
        read_line(path, line, sizeof(line))) {
        port->link_layer = strcmp(line, "Ethernet") == 0     ? TOPO_LINK_ETHERNET
                           : strcmp(line, "InfiniBand") == 0 ? TOPO_LINK_INFINIBAND
                                                             : TOPO_LINK_UNKNOWN;
    }
    if (path_fmt(path, sizeof(path), "%s/class/infiniband/%s/ports/%d/rate", root, dev, num) &&
        read_line(path, line, sizeof(line))) {
        parse_rate(line, port);
    }
    tdm_status_t st = topo_sysfs_read_gids(root, dev, port, err);
    if (st != TDM_OK) {
        return st;
    }
    /* A RoCE port's RDMA MTU follows its netdev's MTU. */
    if (port->link_layer == TOPO_LINK_ETHERNET && port->netdev[0] != '\0' &&
        path_fmt(path, sizeof(path), "%s/class/net/%s/mtu", root, port->netdev) &&
        read_line(path, line, sizeof(line))) {
        port->active_mtu = topo_roce_mtu_for_netdev(atoi(line));
        port->max_mtu = 4096;
    }
    return TDM_OK;
}

void topo_sysfs_read_pci(const char *root, const char *dev, char *out, size_t n)
{
    char path[PATH_MAX], target[PATH_MAX];
    out[0] = '\0';
    if (!path_fmt(path, sizeof(path), "%s/class/infiniband/%s/device", root, dev)) {
        return;
    }
    ssize_t len = readlink(path, target, sizeof(target) - 1);
    if (len <= 0) {
        return;
    }
    target[len] = '\0';
    const char *base = strrchr(target, '/');
    base = base != NULL ? base + 1 : target;
    unsigned a, b, c, d;
    int used = 0;
    if (sscanf(base, "%x:%x:%x.%x%n", &a, &b, &c, &d, &used) == 4 && base[used] == '\0') {
        snprintf(out, n, "%s", base);
    }
}

static uint64_t parse_guid(const char *s)
{
    uint64_t v = 0;
    for (const char *p = s; *p != '\0'; p++) {
        int d = *p >= '0' && *p <= '9'   ? *p - '0'
                : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                : *p >= 'A' && *p <= 'F' ? *p - 'A' + 10
                                         : -1;
        if (d >= 0) {
            v = v << 4 | (uint64_t)d;
        }
    }
    return v;
}

tdm_status_t topo_sysfs_read_ports(const char *root, topo_device_t *dev, tdm_error_t *err)
{
    char path[PATH_MAX];
    if (!path_fmt(path, sizeof(path), "%s/class/infiniband/%s/ports", root, dev->name)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "sysfs path for %s too long", dev->name);
    }
    int *ports = NULL, n_ports = 0;
    tdm_status_t st = list_numeric(path, &ports, &n_ports, err);
    if (st == TDM_OK && n_ports > 0) {
        dev->ports = tdm_xcalloc((size_t)n_ports, sizeof(topo_port_t));
        dev->n_ports = 0;
        for (int p = 0; p < n_ports && st == TDM_OK; p++) {
            st = read_port(root, dev->name, ports[p], &dev->ports[p], err);
            dev->n_ports = p + 1;
        }
    }
    free(ports);
    return st;
}

tdm_status_t topo_discover_sysfs(const char *root, topo_desc_t **out, tdm_error_t *err)
{
    char dir[PATH_MAX], path[PATH_MAX], line[128];
    if (root == NULL) {
        root = "/sys";
    }
    if (!path_fmt(dir, sizeof(dir), "%s/class/infiniband", root)) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "sysfs root '%s' too long", root);
    }
    topo_desc_t *d = tdm_xcalloc(1, sizeof(*d));
    snprintf(d->source, sizeof(d->source), "sysfs at %.300s", root);
    DIR *dh = opendir(dir);
    if (dh == NULL) {
        snprintf(d->note, sizeof(d->note), "%.200s: %.100s", dir, strerror(errno));
        *out = d;
        return TDM_OK;
    }
    char **names = NULL;
    int n_names = 0;
    struct dirent *e;
    while ((e = readdir(dh)) != NULL) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= TOPO_NAME_MAX) {
            continue;
        }
        names = tdm_xrealloc(names, (size_t)(n_names + 1) * sizeof(char *));
        names[n_names++] = tdm_xstrdup(e->d_name);
    }
    closedir(dh);
    if (n_names > 0) {
        qsort(names, (size_t)n_names, sizeof(char *), cmp_str);
    } else {
        snprintf(d->note, sizeof(d->note), "%.200s is empty", dir);
    }

    tdm_status_t st = TDM_OK;
    d->devs = n_names > 0 ? tdm_xcalloc((size_t)n_names, sizeof(topo_device_t)) : NULL;
    for (int i = 0; i < n_names && st == TDM_OK; i++) {
        topo_device_t *dev = &d->devs[d->n_devs++];
        snprintf(dev->name, sizeof(dev->name), "%s", names[i]);
        if (path_fmt(path, sizeof(path), "%s/%s/node_guid", dir, names[i]) &&
            read_line(path, line, sizeof(line))) {
            dev->node_guid = parse_guid(line);
        }
        topo_sysfs_read_pci(root, names[i], dev->pci, sizeof(dev->pci));
        st = topo_sysfs_read_ports(root, dev, err);
    }
    for (int i = 0; i < n_names; i++) {
        free(names[i]);
    }
    free(names);
    if (st != TDM_OK) {
        topo_desc_destroy(d);
        return st;
    }
    *out = d;
    return TDM_OK;
}

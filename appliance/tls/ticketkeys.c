/*
 * The session-ticket key callback in C: what appliance/tls/tickets.py does in its ctypes
 * fallback, without taking the GIL on every handshake.
 *
 * Built as a plain shared library (no Python C API; `make`, debian/rules) against the
 * system libssl that the stdlib `ssl` module uses, and loaded with ctypes. Python owns the
 * key table: it reads the shared ring, derives the wire names and hands the result over
 * with rk_set_keys(). This file only looks keys up.
 *
 * One table per process: a worker has one ticket callback for all its TLS listeners. The
 * callback runs on the worker's loop thread inside SSL_do_handshake (GIL released); the
 * table changes only from rk_set_keys(), which the same thread calls, either at start-up or
 * from the refresh hook the callback itself calls when the ring's sequence moved.
 *
 * Blob layout given to rk_set_keys (native byte order, packed by tickets.py):
 *   u32 nkeys, u32 nnames, u32 ntags
 *   nkeys  x { u8 aes_len, u8 hmac_len, u8 newest, u8 pad, aes[32], hmac[32] }
 *   nnames x { name[16], u16 key, u16 tag }          sorted by name (bsearch)
 *   ntags  x { name[16], u16 key }                   per tag-1; key 0xffff: no key
 */
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NO_KEY 0xffff

struct rk_key {
    const EVP_CIPHER *cipher;
    unsigned char aes[32];
    unsigned char hmac[32];
    int newest;
    OSSL_PARAM params[3];
};

struct rk_name {
    unsigned char name[16];
    uint16_t key;
    uint16_t tag;
};

struct rk_enc {
    unsigned char name[16];
    uint16_t key;
};

static struct {
    const volatile uint64_t *ring_seq; /* the ring's seqlock counter, in shared memory */
    int (*refresh)(void);              /* Python: read the ring, call rk_set_keys */
    int issued_index;                  /* SSL ex_data: tag of the ticket decrypted */
    int site_index;                    /* SSL ex_data: tag chosen by the SNI callback */
    int default_tag;                   /* tag when no SNI callback ran */
    const EVP_CIPHER *aes128, *aes256;
    uint64_t seq;
    struct rk_key *keys;
    struct rk_name *names;
    struct rk_enc *enc;
    uint32_t nkeys, nnames, ntags;
} rk;

static char digest_name[] = "SHA256";

/* Once per process: where the ring's counter is, how to refresh, the ex_data slots. */
int rk_configure(const volatile uint64_t *ring_seq, int (*refresh)(void), int issued_index,
                 int site_index, int default_tag)
{
    if (rk.aes128 == NULL) {
        /* Fetched once: the legacy EVP_aes_*_cbc() make every init fetch again. */
        rk.aes128 = EVP_CIPHER_fetch(NULL, "AES-128-CBC", NULL);
        rk.aes256 = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
        if (rk.aes128 == NULL || rk.aes256 == NULL)
            return 0;
    }
    rk.ring_seq = ring_seq;
    rk.refresh = refresh;
    rk.issued_index = issued_index;
    rk.site_index = site_index;
    rk.default_tag = default_tag;
    rk.seq = UINT64_MAX; /* no table yet: the first callback refreshes */
    return 1;
}

static void clear_table(void)
{
    if (rk.keys != NULL)
        OPENSSL_cleanse(rk.keys, rk.nkeys * sizeof(*rk.keys));
    free(rk.keys);
    free(rk.names);
    free(rk.enc);
    rk.keys = NULL;
    rk.names = NULL;
    rk.enc = NULL;
    rk.nkeys = rk.nnames = rk.ntags = 0;
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static uint16_t get_u16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Replace the table; 1 on success, 0 (table emptied: no tickets) on a malformed blob. */
int rk_set_keys(uint64_t seq, const unsigned char *blob, size_t size)
{
    clear_table();
    rk.seq = seq;
    if (size < 12)
        return 0;
    uint32_t nkeys = get_u32(blob), nnames = get_u32(blob + 4), ntags = get_u32(blob + 8);
    if (nkeys > 4096 || nnames > 1u << 20 || ntags > 1u << 16
        || size != 12 + nkeys * 68u + nnames * 20u + ntags * 18u)
        return 0;
    rk.keys = calloc(nkeys ? nkeys : 1, sizeof(*rk.keys));
    rk.names = calloc(nnames ? nnames : 1, sizeof(*rk.names));
    rk.enc = calloc(ntags ? ntags : 1, sizeof(*rk.enc));
    if (rk.keys == NULL || rk.names == NULL || rk.enc == NULL) {
        clear_table();
        return 0;
    }
    const unsigned char *p = blob + 12;
    for (uint32_t i = 0; i < nkeys; i++, p += 68) {
        struct rk_key *k = &rk.keys[i];
        unsigned aes_len = p[0], hmac_len = p[1];
        if ((aes_len != 16 && aes_len != 32) || hmac_len == 0 || hmac_len > 32) {
            clear_table();
            return 0;
        }
        k->cipher = aes_len == 16 ? rk.aes128 : rk.aes256;
        k->newest = p[2];
        memcpy(k->aes, p + 4, 32);
        memcpy(k->hmac, p + 36, 32);
        k->params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k->hmac, hmac_len);
        k->params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0);
        k->params[2] = OSSL_PARAM_construct_end();
    }
    for (uint32_t i = 0; i < nnames; i++, p += 20) {
        memcpy(rk.names[i].name, p, 16);
        rk.names[i].key = get_u16(p + 16);
        rk.names[i].tag = get_u16(p + 18);
        if (rk.names[i].key >= nkeys) {
            clear_table();
            return 0;
        }
    }
    for (uint32_t i = 0; i < ntags; i++, p += 18) {
        memcpy(rk.enc[i].name, p, 16);
        rk.enc[i].key = get_u16(p + 16);
        if (rk.enc[i].key != NO_KEY && rk.enc[i].key >= nkeys) {
            clear_table();
            return 0;
        }
    }
    rk.nkeys = nkeys;
    rk.nnames = nnames;
    rk.ntags = ntags;
    return 1;
}

static int compare_name(const void *wanted, const void *entry)
{
    return memcmp(wanted, ((const struct rk_name *)entry)->name, 16);
}

/* SSL_CTX_set_tlsext_ticket_key_evp_cb: 1 ok, 2 ok and renew, 0 no key, -1 error. */
int rk_callback(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                EVP_CIPHER_CTX *cipher_ctx, EVP_MAC_CTX *mac_ctx, int enc)
{
    if (rk.ring_seq == NULL)
        return 0;
    if (*rk.ring_seq != rk.seq && (rk.refresh == NULL || !rk.refresh()))
        return 0;
    if (enc) {
        /* After the SNI callback: the tag it noted, else the only vhost's. */
        intptr_t tag = (intptr_t)SSL_get_ex_data(ssl, rk.site_index);
        if (tag == 0)
            tag = rk.default_tag;
        if (tag < 1 || (uint32_t)tag > rk.ntags || rk.enc[tag - 1].key == NO_KEY)
            return 0; /* no key yet: no ticket */
        const struct rk_enc *e = &rk.enc[tag - 1];
        const struct rk_key *k = &rk.keys[e->key];
        memcpy(key_name, e->name, 16);
        if (RAND_bytes(iv, 16) != 1)
            return -1;
        if (!EVP_EncryptInit_ex(cipher_ctx, k->cipher, NULL, k->aes, iv))
            return -1;
        if (!EVP_MAC_CTX_set_params(mac_ctx, k->params))
            return -1;
        return 1;
    }
    const struct rk_name *found = bsearch(key_name, rk.names, rk.nnames, sizeof(*rk.names), compare_name);
    if (found == NULL)
        return 0; /* unknown or expired key: full handshake */
    const struct rk_key *k = &rk.keys[found->key];
    SSL_set_ex_data(ssl, rk.issued_index, (void *)(intptr_t)found->tag);
    if (!EVP_DecryptInit_ex(cipher_ctx, k->cipher, NULL, k->aes, iv))
        return -1;
    if (!EVP_MAC_CTX_set_params(mac_ctx, k->params))
        return -1;
    /* Renew when the key is not the newest, and always on TLS 1.3 (see tickets.py). */
    return !k->newest || SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
}

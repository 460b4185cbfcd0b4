/*
 * The OCSP stapling status callback in C (SSL_CTX_set_tlsext_status_cb): a client that
 * asks for the certificate status gets the response the supervisor keeps in shared
 * memory for the certificate being served (appliance/tls/stapler.py writes it,
 * appliance/tls/stapling.py loads this library). No Python, no GIL, per handshake.
 *
 * Built like ticketkeys.c: a plain shared library against the system libssl the stdlib
 * ssl module uses, loaded with ctypes.
 *
 * Region layout (native byte order): OS_SLOTS slots of OS_SLOT_SIZE bytes, each
 *   u64 seq | fingerprint[20] (SHA-1 of the leaf's DER) | u32 length | u64 reserved | der[]
 * `seq` is a per-slot seqlock (odd while the supervisor writes). Slots are matched by
 * fingerprint, so the supervisor may reassign them across reloads: a worker serving a
 * certificate no slot names staples nothing.
 */
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <string.h>

#define OS_FP_LEN 20
#define OS_HEADER 40
#define OS_RETRIES 64

static struct {
    const volatile unsigned char *region;
    uint32_t slots, slot_size;
    const EVP_MD *sha1;
} os;

/* Once per process: where the region is and how it is cut. */
int os_configure(const unsigned char *region, uint32_t slots, uint32_t slot_size)
{
    if (slot_size <= OS_HEADER || slot_size % 8 != 0)
        return 0;
    os.sha1 = EVP_sha1();
    os.region = region;
    os.slots = slots;
    os.slot_size = slot_size;
    return 1;
}

static uint64_t load_seq(const volatile unsigned char *slot)
{
    return __atomic_load_n((const uint64_t *)slot, __ATOMIC_ACQUIRE);
}

/* The status callback: SSL_TLSEXT_ERR_OK with a staple, SSL_TLSEXT_ERR_NOACK without. */
int os_status_cb(SSL *ssl, void *arg)
{
    (void)arg;
    X509 *cert = SSL_get_certificate(ssl); /* the one chosen for this client (ECDSA or RSA) */
    unsigned char fp[EVP_MAX_MD_SIZE];
    unsigned int fp_len = 0;
    if (os.region == NULL || cert == NULL || !X509_digest(cert, os.sha1, fp, &fp_len) || fp_len != OS_FP_LEN)
        return SSL_TLSEXT_ERR_NOACK;
    for (uint32_t i = 0; i < os.slots; i++) {
        const volatile unsigned char *slot = os.region + (size_t)i * os.slot_size;
        for (int tries = 0; tries < OS_RETRIES; tries++) {
            uint64_t seq = load_seq(slot);
            if (seq & 1)
                continue; /* being written: look again */
            if (memcmp((const void *)(slot + 8), fp, OS_FP_LEN) != 0)
                break; /* another certificate's slot (a torn read is caught below) */
            uint32_t length;
            memcpy(&length, (const void *)(slot + 28), sizeof(length));
            if (length == 0 || length > os.slot_size - OS_HEADER) {
                if (load_seq(slot) != seq)
                    continue;
                return SSL_TLSEXT_ERR_NOACK; /* no valid response for it now */
            }
            unsigned char *der = OPENSSL_malloc(length);
            if (der == NULL)
                return SSL_TLSEXT_ERR_NOACK;
            memcpy(der, (const void *)(slot + OS_HEADER), length);
            if (load_seq(slot) != seq) {
                OPENSSL_free(der);
                continue;
            }
            if (!SSL_set_tlsext_status_ocsp_resp(ssl, der, (long)length)) {
                OPENSSL_free(der);
                return SSL_TLSEXT_ERR_NOACK;
            }
            return SSL_TLSEXT_ERR_OK; /* OpenSSL owns and frees der */
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Install the callback on one server context (a macro in ssl.h, hence here). */
int os_install(SSL_CTX *ctx)
{
    return (int)SSL_CTX_set_tlsext_status_cb(ctx, os_status_cb);
}

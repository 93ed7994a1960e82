#include "support/tls_cert.hpp"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <memory>
#include <stdexcept>

namespace parley::test {
namespace {

void check(bool ok, const char* what) {
  if (!ok)
    throw std::runtime_error(std::string("making a test certificate: ") + what);
}

void write_pem(const std::string& path, bool key, EVP_PKEY* pkey, X509* cert) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "w"), &std::fclose);
  check(f != nullptr, "open");
  if (key)
    check(PEM_write_PrivateKey(f.get(), pkey, nullptr, nullptr, 0, nullptr, nullptr) == 1, "key");
  else
    check(PEM_write_X509(f.get(), cert) == 1, "cert");
}

} // namespace

tls_files make_self_signed(const std::string& dir) {
  std::unique_ptr<EVP_PKEY, void (*)(EVP_PKEY*)> pkey(EVP_EC_gen("P-256"), &EVP_PKEY_free);
  check(pkey != nullptr, "key generation");
  std::unique_ptr<X509, void (*)(X509*)> cert(X509_new(), &X509_free);
  check(cert != nullptr, "X509_new");
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_set_pubkey(cert.get(), pkey.get());
  auto* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, void (*)(X509_EXTENSION*)> san(
    X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost"),
    &X509_EXTENSION_free);
  check(san != nullptr, "subjectAltName");
  X509_add_ext(cert.get(), san.get(), -1);
  check(X509_sign(cert.get(), pkey.get(), EVP_sha256()) > 0, "sign");
  tls_files out{dir + "/cert.pem", dir + "/key.pem"};
  write_pem(out.cert, false, pkey.get(), cert.get());
  write_pem(out.key, true, pkey.get(), cert.get());
  return out;
}

} // namespace parley::test

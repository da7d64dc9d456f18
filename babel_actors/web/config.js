// Where the babel-actors server is. Empty: the server that served these pages.
// When the pages are published apart from the server (for example to S3 behind
// CloudFront), set it to the server's origin: window.BABEL_SERVER = "https://live.example.org";
window.BABEL_SERVER = "";

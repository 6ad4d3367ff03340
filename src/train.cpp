int main() { return 0; }  // placeholder until the options layer lands
